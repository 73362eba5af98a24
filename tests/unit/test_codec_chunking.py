"""Chunking: split_vector -> decode -> chunk_values / assemble, and every way a chunk can lie."""

import dataclasses
import re
import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.codec import (
    ALIGN,
    MIN_PAYLOAD,
    CodecSpec,
    Limits,
    TensorChunk,
    assemble,
    chunk_values,
    decode,
    encode,
    encode_values,
    header_size_bound,
    min_payload,
    split_vector,
)
from fedmq.codec.chunking import digest
from fedmq.codec.wire import WIRE_KEYS
from fedmq.errors import CodecError, DigestMismatch, LimitExceeded

pytestmark = pytest.mark.unit

ALL = ["fp32", "fp32+zstd", "fp16", "fp16+zstd", "bf16", "bf16+zstd", "int8", "int8+zstd"]
U63 = 2**63 - 1
IDS: dict[str, Any] = {"job": "mnist", "sender": "edge-7", "round": 4, "version": 3}


def split(values: np.ndarray, text: str, max_payload: int, **kw: Any) -> list[TensorChunk]:
    args = {**IDS, "role": "update", "num_samples": 11, **kw}
    payloads = split_vector(values, CodecSpec.parse(text), max_payload=max_payload, **args)
    assert all(len(p) <= max_payload for p in payloads)
    limits = Limits(max_payload=max(max_payload, 1 << 20))
    return [decode(p, limits, TensorChunk) for p in payloads]


def expected(values: np.ndarray, chunk: TensorChunk) -> np.ndarray:
    """What a lossy codec must give back for this chunk's slice."""
    part = values[chunk.offset : chunk.offset + chunk.length]
    dtype = CodecSpec.parse(chunk.encoding).dtype
    if dtype == "fp16":
        return part.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        bits = part.view(np.uint32).astype(np.int64)
        low, rem = bits & ~0xFFFF, bits & 0xFFFF
        up = (rem > 0x8000) | ((rem == 0x8000) & ((low >> 16) & 1 == 1))
        bf16: np.ndarray = (low + up * 0x10000).astype(np.uint32).view(np.float32)
        return bf16
    return part


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 6000),
    max_payload=st.integers(MIN_PAYLOAD, 40_000),
    text=st.sampled_from(ALL),
    seed=st.integers(0, 2**32 - 1),
    compressible=st.booleans(),
)
def test_split_then_assemble_round_trips(
    size: int, max_payload: int, text: str, seed: int, compressible: bool
) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 1e-3 if compressible else 1e3, size).astype(np.float32)
    if compressible:
        values[rng.random(size) < 0.5] = 0.0
    chunks = split(values, text, max_payload, metrics={"loss": 0.25, "acc": 0.5})
    count = len(chunks)
    spec = CodecSpec.parse(text)
    for i, chunk in enumerate(chunks):
        assert (chunk.index, chunk.count, chunk.total) == (i, count, size)
        assert chunk.offset % ALIGN == 0
        assert i == count - 1 or (chunk.length % ALIGN == 0 and chunk.length > 0)
        assert chunk.encoding in (str(spec), spec.dtype)
        assert dict(chunk.metrics) == ({"loss": 0.25, "acc": 0.5} if i == 0 else {})
        assert (chunk.job, chunk.sender, chunk.round, chunk.version) == ("mnist", "edge-7", 4, 3)
        assert chunk.num_samples == 11
    shuffled = list(chunks)
    np.random.default_rng(seed).shuffle(shuffled)
    out = assemble(shuffled)
    assert out.dtype == np.float32 and out.shape == (size,)
    for chunk in chunks:
        got = out[chunk.offset : chunk.offset + chunk.length]
        np.testing.assert_array_equal(got, chunk_values(chunk))
        if spec.dtype == "int8":
            want = values[chunk.offset : chunk.offset + chunk.length].astype(np.float64)
            assert np.all(np.abs(got - want) <= chunk.scale * (0.5 + 2.0**-16))
        else:
            np.testing.assert_array_equal(got, expected(values, chunk))


def worst_case_kw() -> dict[str, Any]:
    """The largest header a chunk may have: longest names, 16 longest metrics, 64-bit ints."""
    return {
        "job": "j" * 128,
        "sender": "é" * 64,  # 128 bytes of UTF-8
        "role": "update",
        "round": U63,
        "version": U63,
        "num_samples": U63,
        "metrics": {f"{i:02d}" + "m" * 126: -1.0e300 for i in range(16)},
    }


def incompressible(dtype: str, size: int, seed: int) -> np.ndarray:
    """Full-entropy values that `dtype` represents exactly (so every codec is lossless on them)."""
    rng = np.random.default_rng(seed)
    if dtype == "int8":
        q = rng.integers(-127, 128, size).astype(np.float32)
        q[::ALIGN] = 127.0  # every chunk starts at a multiple of ALIGN: its scale is exactly 1
        return q
    if dtype == "fp32":
        out = rng.integers(0, 2**32, size, dtype=np.uint32).view(np.float32)
    elif dtype == "fp16":
        out = rng.integers(0, 2**16, size, dtype=np.uint16).view(np.float16).astype(np.float32)
    else:
        out = (rng.integers(0, 2**16, size, dtype=np.uint32) << 16).view(np.float32)
    out[~np.isfinite(out)] = 0.0
    return out


@pytest.mark.parametrize("text", ALL)
@pytest.mark.parametrize("extra", [0, 1, 63, 64, 1000, 100_000])
def test_payloads_fit_even_with_worst_case_headers_and_incompressible_data(
    text: str, extra: int
) -> None:
    spec = CodecSpec.parse(text)
    max_payload = min_payload(spec) + extra
    values = incompressible(spec.dtype, 5000, extra)
    payloads = split_vector(values, spec, max_payload=max_payload, **worst_case_kw())
    assert max(len(p) for p in payloads) <= max_payload
    chunks = [decode(p, expect=TensorChunk) for p in payloads]
    assert all(c.encoding in (text, spec.dtype) for c in chunks)
    np.testing.assert_array_equal(assemble(chunks), values)


def test_a_chunk_zstd_does_not_shrink_goes_raw_and_says_so() -> None:
    values = incompressible("fp32", 3000, 0)
    values[:1024] = 0.0  # the first chunk compresses, the others do not
    chunks = split(values, "fp32+zstd", min_payload() + 1024 * 4)
    assert [c.encoding for c in chunks] == ["fp32+zstd", "fp32", "fp32"]
    assert len(chunks[1].data) == chunks[1].length * 4
    np.testing.assert_array_equal(assemble(chunks), values)


def test_header_bound_is_a_bound_and_tight() -> None:
    bound = header_size_bound()
    total = U63
    chunk = TensorChunk(
        **{**worst_case_kw(), "role": "update"},
        index=U63 - 1,
        count=U63,
        total=total,
        offset=total - 63,
        length=63,
        encoding="bf16+zstd",
        scale=1e-300,
        digest=digest(b""),
        data=b"",
        sig=b"s" * 64,
    )
    actual = len(encode(chunk))
    assert actual <= bound
    # the only slack: "bf16+zstd" takes 10 bytes of the 130 reserved for a codec string, the
    # length 63 one byte of 9, the empty data's bin8 header 2 bytes of 5
    assert bound - actual == 120 + 8 + 3
    assert bound == 2842  # documented in docs/protocol.md
    assert MIN_PAYLOAD == bound + ALIGN * 4 == 3098
    assert header_size_bound(Limits(max_metrics=1)) < bound


def test_max_payload_too_small_names_the_minimum() -> None:
    values = np.zeros(10, np.float32)
    with pytest.raises(CodecError, match=f"minimum is {MIN_PAYLOAD}"):
        split_vector(values, CodecSpec("fp32"), max_payload=MIN_PAYLOAD - 1, role="model", **IDS)
    int8 = CodecSpec("int8")
    assert min_payload(int8) == header_size_bound() + ALIGN
    assert len(split_vector(values, int8, max_payload=min_payload(int8), role="model", **IDS)) == 1


def test_chunk_size_is_aligned_and_capped() -> None:
    values = np.zeros(3 * 64 + 5, np.float32)
    chunks = split(values, "fp32", MIN_PAYLOAD + 4 * 64)  # room for exactly 128 values
    assert [c.length for c in chunks] == [128, 69]
    big = np.zeros((1 << 20) + 1, np.float32)
    chunks = split(big, "int8", 2 << 20)  # room for 2M values, capped at max_chunk_elems
    assert [c.length for c in chunks] == [1 << 20, 1]


def test_empty_vector_is_one_empty_chunk() -> None:
    (chunk,) = split(np.zeros(0, np.float32), "fp32+zstd", MIN_PAYLOAD)
    assert (chunk.count, chunk.total, chunk.length) == (1, 0, 0)
    assert assemble([chunk]).shape == (0,)


def test_split_vector_rejects_bad_input() -> None:
    spec = CodecSpec("fp32")
    kw: dict[str, Any] = {"max_payload": 1 << 20, "role": "update", **IDS}
    with pytest.raises(CodecError, match="1-D float32"):
        split_vector(np.zeros(4, np.float64), spec, **kw)
    with pytest.raises(CodecError, match="NaN or Inf"):
        split_vector(np.array([1.0, np.nan], np.float32), spec, **kw)
    with pytest.raises(LimitExceeded, match="max_params"):
        split_vector(np.broadcast_to(np.float32(0), (50_000_001,)), spec, **kw)
    many = np.broadcast_to(np.float32(0), (65_537 * ALIGN,))
    with pytest.raises(LimitExceeded, match="max_chunks"):
        split_vector(many, spec, **{**kw, "max_payload": MIN_PAYLOAD})
    with pytest.raises(CodecError, match=re.escape("TensorChunk.sender")):
        split_vector(np.zeros(4, np.float32), spec, **{**kw, "sender": "a/b"})
    with pytest.raises(CodecError, match="num_samples must be 0"):
        split_vector(np.zeros(4, np.float32), spec, **{**kw, "role": "model", "num_samples": 3})


# ---- hostile chunks ---------------------------------------------------------------------------


def make_chunk(values: np.ndarray, text: str = "fp32", **changes: Any) -> TensorChunk:
    data, scale = encode_values(values, CodecSpec.parse(text))
    fields: dict[str, Any] = {
        **IDS,
        "role": "update",
        "index": 0,
        "count": 1,
        "total": values.size,
        "offset": 0,
        "length": values.size,
        "encoding": text,
        "scale": scale,
        "num_samples": 1,
        "metrics": {},
        "digest": digest(data),
        "data": data,
    }
    fields.update(changes)
    return TensorChunk(**fields)


VALUES = np.arange(256, dtype=np.float32) / 7


@settings(max_examples=50, deadline=None)
@given(text=st.sampled_from(ALL), bit=st.integers(0, 10_000))
def test_a_flipped_bit_in_data_is_a_digest_mismatch(text: str, bit: int) -> None:
    chunk = make_chunk(VALUES, text)
    flipped = bytearray(chunk.data)
    bit %= len(flipped) * 8
    flipped[bit // 8] ^= 1 << (bit % 8)
    payload = encode(chunk)
    start = payload.index(chunk.data)
    wire = payload[:start] + bytes(flipped) + payload[start + len(flipped) :]
    with pytest.raises(DigestMismatch):
        chunk_values(decode(wire, expect=TensorChunk))
    bad_digest = bytes([chunk.digest[0] ^ 1]) + chunk.digest[1:]
    with pytest.raises(DigestMismatch):
        chunk_values(dataclasses.replace(chunk, digest=bad_digest))


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"length": 255, "total": 255}, CodecError),  # data holds 256 values
        ({"length": 257, "total": 257}, CodecError),
        ({"encoding": "fp16"}, CodecError),  # 1024 bytes of data; 256 fp16 values take 512
        ({"encoding": "fp32+zstd"}, CodecError),  # raw bytes are not a zstd frame
        ({"scale": 2.0}, CodecError),  # fp32 carries no scale
        ({"length": (1 << 20) + 1, "total": (1 << 20) + 1}, LimitExceeded),
        ({"length": U63, "total": U63}, LimitExceeded),
        ({"count": 65_537, "index": 65_536}, LimitExceeded),
    ],
)
def test_lying_headers_are_rejected(changes: dict[str, Any], error: type[Exception]) -> None:
    chunk = make_chunk(VALUES, **changes)
    with pytest.raises(error):
        chunk_values(chunk)
    with pytest.raises(error):
        chunk_values(decode(encode(chunk), expect=TensorChunk))


def test_total_over_max_params_is_rejected_before_anything_else() -> None:
    last = make_chunk(VALUES, total=60_000_000 * 64, offset=60_000_000 * 64 - 256, index=1, count=2)
    with pytest.raises(LimitExceeded, match="total"):
        decode(encode(last))
    with pytest.raises(LimitExceeded, match="total"):
        assemble([make_chunk(VALUES, total=256 + 64, count=2, length=256), last])


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"offset": 32}, "multiple of 64"),
        ({"index": 1}, "index must be < count"),
        ({"total": 200}, "ends past total"),
        ({"total": 300}, "last chunk must end at total"),
        ({"count": 2, "length": 100, "total": 300}, "positive multiple of 64"),
        ({"count": 2, "length": 0, "total": 300}, "positive multiple of 64"),
        ({"count": 0}, "count"),
        ({"digest": b"\x00" * 15}, "16 bytes"),
        ({"role": "model", "num_samples": 1}, "num_samples must be 0"),
        ({"role": "delta"}, "role"),
        ({"scale": 0.0}, "scale must be > 0"),
        ({"scale": float("nan")}, "scale must be finite"),
        ({"metrics": {"loss": float("nan")}}, "finite"),
        ({"metrics": {f"m{i}": 1.0 for i in range(17)}}, "17 entries"),
        ({"metrics": [("loss", 1.0)]}, "must be a map"),
        ({"data": "text"}, "data must be bytes"),
    ],
)
def test_impossible_geometry_and_fields_are_rejected(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        make_chunk(VALUES, **changes)


def test_geometry_lies_on_the_wire_are_rejected_at_decode() -> None:
    body = msgpack.unpackb(encode(make_chunk(VALUES)), raw=False)
    keys = WIRE_KEYS[TensorChunk]
    for field, value, needle in [
        ("offset", 1, "multiple of"),
        ("total", 100, "ends past total"),
        ("index", 5, "index must be < count"),
        ("length", -1, "length"),
    ]:
        with pytest.raises(CodecError, match=needle):
            decode(msgpack.packb({**body, keys[field]: value}, use_bin_type=True))


def test_nan_and_inf_are_rejected_unless_allowed() -> None:
    values = VALUES.copy()
    values[3] = np.nan
    raw = values.tobytes()
    chunk = make_chunk(VALUES, data=raw, digest=digest(raw))
    with pytest.raises(CodecError, match="NaN or Inf"):
        chunk_values(chunk)
    assert np.isnan(chunk_values(chunk, require_finite=False)[3])
    with pytest.raises(CodecError, match="NaN or Inf"):
        assemble([chunk])
    huge = make_chunk(VALUES, "int8", scale=1e300)  # dequantises to inf
    with pytest.raises(CodecError, match="NaN or Inf"):
        chunk_values(huge)


def test_zstd_bomb_in_a_chunk_is_rejected_without_allocating() -> None:
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    zeros = bytes(1 << 20)
    bomb = b"".join(cobj.compress(zeros) for _ in range(1024)) + cobj.flush()  # 1 GiB of zeros
    chunk = make_chunk(VALUES[:64], encoding="fp32+zstd", data=bomb, digest=digest(bomb))
    payload = encode(chunk)
    assert len(payload) < 64 * 1024
    tracemalloc.start()
    try:
        received = decode(payload, expect=TensorChunk)
        with pytest.raises(CodecError, match="zstd"):
            chunk_values(received)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def two_chunks(**changes: Any) -> list[TensorChunk]:
    a = make_chunk(VALUES[:128], total=256, count=2, length=128)
    b = make_chunk(VALUES[128:], total=256, count=2, index=1, offset=128)
    return [a, dataclasses.replace(b, **changes)]


def test_assemble_checks_the_tiling() -> None:
    np.testing.assert_array_equal(assemble(two_chunks()), VALUES)
    a, b = two_chunks()
    with pytest.raises(CodecError, match="at least one"):
        assemble([])
    with pytest.raises(CodecError, match="1 chunks given"):
        assemble([a])
    with pytest.raises(CodecError, match="missing or repeated"):
        assemble([a, a])
    with pytest.raises(CodecError, match="3 chunks given"):
        assemble([a, b, b])
    overlap = make_chunk(np.zeros(192, np.float32), total=256, count=2, index=1, offset=64)
    with pytest.raises(CodecError, match="starts at 64, expected 128"):
        assemble([a, overlap])
    short = make_chunk(VALUES[:64], total=256, count=2, length=64)
    with pytest.raises(CodecError, match="starts at 128, expected 64"):
        assemble([short, b])


@pytest.mark.parametrize(
    "changes",
    [{"sender": "edge-8"}, {"version": 9}, {"round": 5}, {"job": "other"}, {"role": "model"}],
)
def test_assemble_refuses_to_mix_vectors(changes: dict[str, Any]) -> None:
    if changes.get("role") == "model":
        changes = {**changes, "num_samples": 0}
    with pytest.raises(CodecError, match="disagree"):
        assemble(two_chunks(**changes))


def test_assemble_applies_limits() -> None:
    with pytest.raises(LimitExceeded):
        assemble(two_chunks(), Limits(max_params=255))
    with pytest.raises(LimitExceeded):
        assemble(two_chunks(), Limits(max_chunk_elems=127))
    with pytest.raises(LimitExceeded):
        assemble(two_chunks(), Limits(max_chunks=1))


# ---- every codec of the compression issue -----------------------------------------------------

EVERY = [
    *ALL,
    *("int8:sr", "int8:sr+zstd", "int4", "int4+zstd", "int4:sr+zstd", "sign", "sign+zstd"),
    *("topk:0.01+int8+zstd", "topk:0.1+int8", "topk:0.5+fp32", "topk:0.9+fp16+zstd"),
    *("topk:1.0+bf16", "topk:0.01+sign+zstd", "topk:0.3+int4:sr", "topk:0.001+fp32+zstd"),
]


def hard_values(kind: str, size: int, seed: int) -> np.ndarray:
    """Data that is hard on a codec: full-entropy mantissas, heavy tails, zeros, spikes."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":  # within the fp16 range, every mantissa bit random
        return rng.uniform(-6e4, 6e4, size).astype(np.float32)
    if kind == "heavy":
        return (rng.standard_cauchy(size) * 1e-3).clip(-6e4, 6e4).astype(np.float32)
    if kind == "zeros":
        return np.zeros(size, np.float32)
    values = rng.normal(0, 1e-3, size).astype(np.float32)  # "spiky": a few huge entries
    if size:
        values[rng.integers(0, size, 1 + size // 500)] = 1e4
    return values


@settings(max_examples=80, deadline=None)
@given(
    text=st.sampled_from(EVERY),
    kind=st.sampled_from(["uniform", "heavy", "zeros", "spiky"]),
    size=st.integers(0, 20_000),
    extra=st.sampled_from([0, 1, 63, 500, 5000, 60_000]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_codec_fits_max_payload_and_decoded_is_what_arrives(
    text: str, kind: str, size: int, extra: int, seed: int
) -> None:
    spec = CodecSpec.parse(text)
    max_payload = min_payload(spec) + extra
    values = hard_values(kind, size, seed)
    decoded = np.full(size, np.nan, np.float32)
    payloads = split_vector(
        values, spec, max_payload=max_payload, rng=np.random.default_rng(seed), decoded=decoded,
        **worst_case_kw(),
    )  # fmt: skip
    assert max(len(p) for p in payloads) <= max_payload
    chunks = [decode(p, expect=TensorChunk) for p in payloads]
    forms = {str(spec), str(spec.raw), str(spec.dense), str(spec.dense.raw)}
    assert {c.encoding for c in chunks} <= forms
    out = assemble(chunks)
    assert out.tobytes() == decoded.tobytes()  # split_vector says exactly what arrives
    if not spec.lossy:
        assert out.tobytes() == values.tobytes()
    if kind == "zeros":
        assert not out.any()


@pytest.mark.parametrize("text", EVERY)
def test_min_payload_is_the_minimum_for_every_codec(text: str) -> None:
    spec = CodecSpec.parse(text)
    values = hard_values("uniform", 200, 0)
    assert min_payload(spec) <= MIN_PAYLOAD
    payloads = split_vector(values, spec, max_payload=min_payload(spec), **worst_case_kw())
    assert max(len(p) for p in payloads) <= min_payload(spec)
    with pytest.raises(CodecError, match=f"minimum is {min_payload(spec)}"):
        split_vector(values, spec, max_payload=min_payload(spec) - 1, **worst_case_kw())


def test_sparse_chunks_are_large_and_tiny() -> None:
    values = np.random.default_rng(0).normal(0, 1e-3, 1 << 20).astype(np.float32)
    chunks = split(values, "topk:0.01+int8+zstd", 128 * 1024)
    assert [c.length for c in chunks] == [1 << 20]  # one chunk: the bound allows max elems
    assert chunks[0].encoding == "topk:0.01+int8+zstd"
    assert len(encode(chunks[0])) < 0.02 * values.nbytes
    dense = split(values, "int4+zstd", 128 * 1024)
    assert dense[0].length == (128 * 1024 - header_size_bound()) * 2 // ALIGN * ALIGN


def test_rng_is_threaded_through_and_seeded_by_default() -> None:
    values = np.random.default_rng(0).normal(0, 1, 50_000).astype(np.float32)
    kw: dict[str, Any] = {"max_payload": 8192, "role": "update", **IDS}
    sr = CodecSpec.parse("int4:sr+zstd")
    a = split_vector(values, sr, rng=np.random.default_rng(5), **kw)
    assert a == split_vector(values, sr, rng=np.random.default_rng(5), **kw)
    assert a != split_vector(values, sr, rng=np.random.default_rng(6), **kw)
    assert split_vector(values, sr, **kw) == split_vector(values, sr, **kw)  # default seed 0
    assert len({decode(p, expect=TensorChunk).data for p in a}) == len(a)  # chunks differ
    nearest = CodecSpec.parse("int4+zstd")
    assert split_vector(values, nearest, rng=np.random.default_rng(5), **kw) == split_vector(
        values, nearest, **kw
    )


def test_decoded_must_match_the_vector() -> None:
    kw: dict[str, Any] = {"max_payload": 8192, "role": "update", **IDS}
    values = np.zeros(100, np.float32)
    for bad in (np.zeros(99, np.float32), np.zeros(100, np.float64), [0.0] * 100):
        with pytest.raises(CodecError, match="decoded"):
            split_vector(values, CodecSpec("int8"), decoded=bad, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["sign", "int4", "topk:0.5+sign", "topk:0.5+int8+zstd"])
def test_a_scale_that_overflows_float32_is_caught(text: str) -> None:
    chunk = make_chunk(VALUES, text, scale=1e300)
    with pytest.raises(CodecError, match="NaN or Inf"):
        chunk_values(chunk)
