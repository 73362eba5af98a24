"""The decoder's contract under hostile input (the quick version of bench/fuzz_decoder.py).

For any payload: `decode` and, for a chunk, `chunk_values` (also with the digest recomputed, as a
hostile edge would send it) succeed or raise a FedmqError, and allocate only what the limits
allow.
"""

import dataclasses
import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmq.codec import (
    MIN_PAYLOAD,
    CodecSpec,
    Control,
    JobSpec,
    Limits,
    RoundSummary,
    RoundTask,
    Status,
    TensorChunk,
    chunk_values,
    codec_names,
    decode,
    encode,
    split_vector,
)
from fedmq.codec.chunking import digest
from fedmq.errors import CodecError, FedmqError

pytestmark = pytest.mark.unit

LIMITS = Limits()
MiB = 1 << 20


def _corpus() -> list[bytes]:
    out = [
        encode(Status(job="j", sender="e0", role="edge", online=True, num_samples=5)),
        encode(
            JobSpec(
                job="j",
                model="mlp",
                dataset="digits",
                partition="iid",
                clients=2,
                seed=0,
                codec="fp32",
                max_payload=MIN_PAYLOAD,
                layout=(("w", (4, 3)), ("b", (4,))),
            )
        ),
        encode(
            RoundTask(
                job="j",
                round=1,
                version=0,
                salt=bytes(range(8)),
                threshold=bytes(8),
                deadline_s=5.0,
                local_epochs=1,
                batch_size=8,
                lr=0.1,
                momentum=0.0,
                codec="fp32",
            )
        ),
        encode(
            RoundSummary(
                job="j",
                round=1,
                version=1,
                accuracy=0.5,
                loss=1.0,
                participants=1,
                num_samples=5,
                duration_s=0.1,
            )
        ),
        encode(Control(job="j", command="stop", reason="done")),
    ]
    flat = np.random.default_rng(0).normal(0, 0.1, 200).astype(np.float32)
    for name, _ in codec_names():
        try:
            spec = CodecSpec.parse(name)
        except FedmqError:
            continue
        out += split_vector(
            flat,
            spec,
            max_payload=MIN_PAYLOAD,
            job="j",
            sender="e0",
            role="update",
            round=1,
            version=0,
            num_samples=5,
            metrics={"loss": 0.5},
        )
    return out


CORPUS = _corpus()


def check(payload: bytes) -> None:
    """The property: only FedmqError escapes, and what decodes is well formed."""
    try:
        msg = decode(payload, LIMITS)
    except FedmqError:
        return
    if not isinstance(msg, TensorChunk):
        return
    for chunk in (msg, dataclasses.replace(msg, digest=digest(msg.data))):
        try:
            values = chunk_values(chunk, LIMITS)
        except FedmqError:
            continue
        assert values.dtype == np.float32 and values.shape == (chunk.length,)
        assert np.isfinite(values).all()


def test_the_corpus_is_real_and_valid() -> None:
    assert len(CORPUS) > 10
    kinds = {msgpack.unpackb(p)["k"] for p in CORPUS}
    assert kinds == {"status", "job", "task", "summary", "control", "chunk"}
    for payload in CORPUS:
        msg = decode(payload, LIMITS)
        if isinstance(msg, TensorChunk):
            chunk_values(msg, LIMITS)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes(payload: bytes) -> None:
    check(payload)


_edit = st.tuples(
    st.sampled_from(("flip", "set", "insert", "delete", "truncate")),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=255),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CORPUS), st.lists(_edit, min_size=1, max_size=4))
def test_byte_mutations_of_real_messages(payload: bytes, edits: list[tuple[str, int, int]]) -> None:
    data = bytearray(payload)
    for op, pos, byte in edits:
        i = pos % (len(data) + 1)
        if op == "insert":
            data[i:i] = bytes([byte])
        elif op == "truncate":
            del data[i:]
        elif data and i < len(data):
            if op == "flip":
                data[i] ^= 1 << (byte % 8)
            elif op == "set":
                data[i] = byte
            else:
                del data[i]
    check(bytes(data))


_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=200)
    | st.binary(max_size=200)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
)
_value = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS), st.data())
def test_field_mutations_of_real_messages(payload: bytes, data: st.DataObject) -> None:
    """A field of a well-formed message replaced, removed or added, digest fixed or not; the
    peak allocation stays far below the limits (a chunk may legally decode to 8 MiB)."""
    body: dict[str, Any] = msgpack.unpackb(payload)
    key = data.draw(st.sampled_from(sorted(body)))
    action = data.draw(st.sampled_from(("replace", "replace", "delete", "add")))
    if action == "replace":
        body[key] = data.draw(_value)
    elif action == "delete":
        del body[key]
    else:
        body[data.draw(st.text(max_size=12))] = data.draw(_value)
    if isinstance(body.get("b"), bytes) and data.draw(st.booleans()):  # a chunk's data
        body["d"] = digest(body["b"])
    tracemalloc.start()
    try:
        check(msgpack.packb(body))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


def _bomb(total: int, *, declare: bool) -> bytes:
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=declare)
    obj = cctx.compressobj(size=total if declare else -1)
    piece = bytes(MiB)
    return b"".join(obj.compress(piece) for _ in range(total // MiB)) + obj.flush()


@pytest.mark.parametrize("declare", [False, True])
def test_a_zstd_bomb_is_a_codec_error_without_allocating(declare: bool) -> None:
    """64 MiB of zeros in a ~2 KB frame, claimed as a 1024-element chunk, digest correct."""
    frame = _bomb(64 * MiB, declare=declare)
    assert len(frame) < 4096
    chunk = TensorChunk(
        job="j", sender="e0", role="update", round=1, version=0, index=0, count=1,
        total=1024, offset=0, length=1024, encoding="fp32+zstd", scale=1.0, num_samples=5,
        metrics={}, digest=digest(frame), data=frame,
    )  # fmt: skip
    chunk = decode(encode(chunk), LIMITS, expect=TensorChunk)
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            chunk_values(chunk, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # not even the 4 KiB the chunk would be: nothing is inflated


def test_many_small_containers_are_refused_before_they_are_built() -> None:
    """1 MiB of empty maps used to build ~70 MiB of objects before any check (found by fuzzing)."""
    import tracemalloc

    from fedmq.codec import decode
    from fedmq.errors import LimitExceeded

    wide = b"\xdc\x27\x10" + b"\x80" * 10_000  # an array of 10,000 empty maps
    payload = b"\x83\xa1v\x01\xa1k\xa3job\xa6layout" + b"\xdc\x00\x68" + wide * 104
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceeded, match="arrays and maps"):
            decode(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
