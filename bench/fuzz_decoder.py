"""Fuzz the wire decoder: real messages, mutated, through `decode` and `chunk_values`.

The property (docs/protocol.md §8-§9): for ANY payload, `decode(payload, Limits())` and, for a
TensorChunk, `chunk_values(chunk)` either succeed or raise a `FedmqError`; anything else is a
finding. Every case also runs with its digest recomputed, because a digest is no signature: a
hostile edge sends correct digests, so the value decoder must hold on its own. Memory is watched
with tracemalloc (Python objects, numpy buffers, zstd output; not libzstd's internal window,
which `MAX_WINDOW` bounds): a case that allocates more than `--mem-limit` MiB is a finding.

The corpus is real: every message kind from `encode`, and model and update vectors chunked by
`split_vector` with every codec spec of `codec_names()` that parses (each also without zstd, plus
`EXTRA_SPECS`), at several payload sizes.
Each case takes one corpus entry and applies 1-3 mutations: bit flips, byte overwrite, insert,
delete, duplicate, truncate, splice with another entry, and msgpack-level edits (a field changed
to another type, a huge int, a long str/bin, nested containers, an ext type, a key removed or
added, a chunk's data or geometry changed with its digest fixed). Case i uses its own RNG seeded
from (--seed, i), so `--case i` replays it. A list of hand-crafted cases (zstd bombs, declared
lengths of 4 G, deep nesting, wide nests of empty containers...) runs once first. The exit
status is 1 when there is a finding.

`--atheris` runs the same check under libFuzzer (atheris), coverage-guided over the functions of
fedmq.codec, from the same seed corpus; its mutator mixes libFuzzer's byte mutations with the
msgpack-level edits above. A non-FedmqError stops it and leaves the input in --save (or beside
the seed corpus); libFuzzer's -rss_limit_mb (2 GiB) is its only memory check.

    .venv/bin/python bench/fuzz_decoder.py                     # 100,000 cases, seed 0
    .venv/bin/python bench/fuzz_decoder.py --cases 2000 --seed 3
    .venv/bin/python bench/fuzz_decoder.py --case 41234 --save /tmp/case  # replay one case
    .venv/bin/python bench/fuzz_decoder.py --atheris --cases 100000      # coverage-guided
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import heapq
import math
import os
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zstandard

from fedmq.codec import (
    MIN_PAYLOAD,
    CodecSpec,
    Control,
    JobSpec,
    Limits,
    Message,
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
from fedmq.codec.limits import SCHEMA_VERSION
from fedmq.codec.wire import WIRE_KEYS
from fedmq.errors import FedmqError

K = WIRE_KEYS[TensorChunk]  # field name -> its key on the wire

LIMITS = Limits()
MiB = 1 << 20


# --- the corpus ---------------------------------------------------------------------------------


def real_vectors() -> dict[str, np.ndarray]:
    """The initial mlp model, one client's update against it, and small edge cases."""
    import torch

    from fedmq.workloads import (
        PartitionSpec,
        TrainConfig,
        build_model,
        get_flat,
        load_dataset,
        partition,
        train_local,
    )

    torch.set_num_threads(1)
    train, _ = load_dataset("digits", seed=0)
    part = partition(train.y, 10, PartitionSpec.parse("dirichlet:0.5"), seed=0)[0]
    model = build_model("mlp", num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=0)
    flat = get_flat(model)
    trained = train_local("mlp", flat, train.subset(part), TrainConfig(local_epochs=1), seed=0)
    return {
        "model": flat,
        "update": trained.flat - flat,
        "zeros": np.zeros(1000, dtype=np.float32),
        "tiny": np.array([1.0, -0.5, 0.0], dtype=np.float32),
        "empty": np.zeros(0, dtype=np.float32),
    }


# Tried besides codec_names() and each of its specs without "+zstd"; kept if they parse.
EXTRA_SPECS = ("int8:sr", "topk:0.5+fp32", "topk:1+fp16", "topk:0.1+int4:sr", "topk:0.3+sign+zstd")


@functools.cache
def spec_names() -> list[str]:
    """Every spec of `codec_names()` that parses, each also without zstd, and EXTRA_SPECS."""
    names = [name for name, _ in codec_names()]
    names += [name.removesuffix("+zstd") for name in names] + list(EXTRA_SPECS)
    out: list[str] = []
    for name in dict.fromkeys(names):
        try:
            CodecSpec.parse(name)
        except FedmqError:
            continue  # a spec this build does not speak
        out.append(name)
    return out


def specs() -> list[CodecSpec]:
    return [CodecSpec.parse(name) for name in spec_names()]


def corpus() -> list[bytes]:
    """Real payloads: every message kind, and chunks of real vectors in every codec."""
    vectors = real_vectors()
    layout = (("fc1.weight", (128, 64)), ("fc1.bias", (128,)), ("fc2.weight", (10, 128)))
    messages: list[Message] = [
        Status(job="job1", sender="edge-0", role="edge", online=True, num_samples=114),
        Status(job="job1", sender="cloud", role="cloud", online=False, profile="rpi4"),
        JobSpec(
            job="job1",
            model="mlp",
            dataset="digits",
            partition="dirichlet:0.5",
            clients=10,
            seed=0,
            codec="fp16+zstd",
            max_payload=131072,
            layout=layout,
        ),
        RoundTask(
            job="job1",
            round=3,
            version=2,
            salt=bytes(range(8)),
            threshold=b"\x80" + bytes(7),
            deadline_s=60.0,
            local_epochs=5,
            batch_size=32,
            lr=0.05,
            momentum=0.9,
            codec="int8+zstd",
        ),
        RoundSummary(
            job="job1",
            round=3,
            version=3,
            accuracy=0.95,
            loss=0.17,
            participants=2,
            num_samples=307,
            duration_s=4.2,
        ),
        Control(job="job1", command="stop", reason="done"),
    ]
    out = [encode(m) for m in messages]
    for spec in specs():
        for name, flat in vectors.items():
            for max_payload in (MIN_PAYLOAD, 8192, 131072):
                role = "model" if name == "model" else "update"
                try:
                    payloads = split_vector(
                        flat,
                        spec,
                        max_payload=max_payload,
                        job="job1",
                        sender="cloud" if role == "model" else "edge-3",
                        role=role,
                        round=3,
                        version=2,
                        num_samples=0 if role == "model" else 114,
                        metrics={"loss": 0.25, "accuracy": 0.9} if role == "update" else {},
                    )
                except FedmqError:
                    continue  # e.g. values out of an fp16 range
                out.extend(payloads[:2] + payloads[-1:] if len(payloads) > 3 else payloads)
    return out


# --- mutations ----------------------------------------------------------------------------------

Mutator = Callable[[random.Random, bytes, list[bytes]], bytes]
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xC1, 0xC4, 0xC6, 0xCF, 0xD3, 0xDB)
INTERESTING_INTS = (0, 1, -1, 63, 64, 65, 127, 128, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1)
INTERESTING_FLOATS = (0.0, -0.0, 1.0, math.nan, math.inf, -math.inf, 1e308, 5e-324, -1.0)


def bit_flip(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _flip in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def byte_set(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _byte in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] = rng.choice((*INTERESTING_BYTES, rng.randrange(256)))
    return bytes(out)


def insert(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    i = rng.randint(0, len(data))
    return data[:i] + rng.randbytes(rng.randint(1, 16)) + data[i:]


def delete(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 16) :]


def duplicate(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    part = data[i : i + rng.randint(1, 64)]
    j = rng.randint(0, len(data))
    return data[:j] + part + data[j:]


def truncate(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    return data[: rng.randint(0, max(len(data) - 1, 0))]


def splice(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    other = rng.choice(pool)
    return data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)) :]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A msgpack-encodable value of any type, biased to the edges of each.

    Long strings and bins only at the top, wide lists only of small leaves: the packed value
    stays under about 1 MiB (the generator must not be what runs out of memory).
    """
    top = depth == 0
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return rng.choice((None, True, False))
    if kind == 1:
        return rng.choice((*INTERESTING_INTS, -(2**63), -(2**31), rng.randint(-(2**63), 2**64 - 1)))
    if kind == 2:
        return rng.choice((*INTERESTING_FLOATS, rng.uniform(-1e9, 1e9)))
    if kind == 3:
        n = rng.choice((0, 1, 15, 127, 128, 129, *((1000, 70_000) if top else ())))
        alphabet = rng.choice(("abc", "é€😀", "a/+#", "a\x00", "fp32+zstd"))
        return ("".join(rng.choices(alphabet, k=64)) * (n // 64 + 1))[:n]
    if kind == 4:
        return rng.randbytes(rng.choice((0, 1, 15, 16, 17, 64, *((1000, 100_000) if top else ()))))
    if kind == 5:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(20)))
    if kind == 6:
        return rng.choice(("fp32", "int8+zstd", "zstd+fp32", "fp32+", "fp32:1", "", "update"))
    if kind == 7:
        n = rng.choice((0, 1, 2, 3, 8, 9, 100, 5000))
        if n > 9:  # wide: one small leaf repeated
            return [random_value(rng, 3)] * n
        return [random_value(rng, depth + 1) for _ in range(n)]
    if kind == 8:
        keys = (*("v", "k", "j", "b", "d", "m"), *("x" * i for i in range(3)))
        return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(20))}
    return [[[]] * rng.randrange(50)] * rng.randrange(50)  # nested empty containers


def _chunk_edit(rng: random.Random, body: dict[Any, Any]) -> None:
    """Change a chunk's data or geometry the way a hostile sender could, then fix its digest."""
    data = body.get(K["data"])
    choice = rng.randrange(6)
    if choice == 0 and isinstance(data, bytes):
        body[K["data"]] = bit_flip(rng, data, [])
    elif choice == 1:
        body[K["data"]] = rng.randbytes(rng.choice((0, 1, 3, 4, 63, 64, 256, 4096)))
    elif choice == 2:  # a zstd frame of arbitrary content, with or without its size
        size = rng.choice((0, 1, 64, 256, 4096, 65536))
        raw = rng.choice((bytes(size), rng.randbytes(size)))
        cctx = zstandard.ZstdCompressor(level=1, write_content_size=rng.random() < 0.5)
        frame = cctx.compress(raw)
        body[K["data"]] = frame + (rng.choice((b"", frame, b"\x00")) if rng.random() < 0.2 else b"")
    elif choice == 3:
        name = rng.choice(("length", "total", "offset", "count", "index", "num_samples"))
        body[K[name]] = rng.choice((*INTERESTING_INTS, 1 << 20, (1 << 20) + 1, 50_000_000))
    elif choice == 4:
        body[K["scale"]] = rng.choice((*INTERESTING_FLOATS, 1e-300, 1e300, 2**-149))
    else:
        body[K["encoding"]] = rng.choice((*spec_names(), "topk:1e-9+fp32", "topk:1+fp32+zstd"))
    if isinstance(body.get(K["data"]), bytes) and rng.random() < 0.9:
        body[K["digest"]] = digest(body[K["data"]])


def field_edit(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    """A msgpack-level edit of a well-formed map; falls back to a bit flip on anything else."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return bit_flip(rng, data, [])
    if not isinstance(body, dict) or not body:
        return bytes(msgpack.packb(random_value(rng), use_bin_type=True))
    if body.get("k") == "chunk" and rng.random() < 0.5:
        _chunk_edit(rng, body)
    else:
        key = rng.choice(list(body))
        action = rng.randrange(6)
        if action == 0:
            del body[key]
        elif action == 1:
            body[rng.choice(("extra", "V", key.upper() if isinstance(key, str) else "x"))] = 1
        elif action == 2 and isinstance(key, str):
            body[key.encode()] = body.pop(key)  # the key as bin
        else:
            body[key] = random_value(rng)
    try:
        return bytes(msgpack.packb(body, use_bin_type=True))
    except (ValueError, TypeError, OverflowError):
        return data


MUTATORS: tuple[Mutator, ...] = (
    bit_flip,
    byte_set,
    insert,
    delete,
    duplicate,
    truncate,
    splice,
    *(field_edit,) * 7,  # half the picks: edits that keep the msgpack well formed go deeper
)


def mutate(rng: random.Random, pool: list[bytes]) -> tuple[bytes, str]:
    data = rng.choice(pool)
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        mutator = rng.choice(MUTATORS)
        data = mutator(rng, data, pool)
        names.append(mutator.__name__)
    return data, "+".join(names)


# --- hand-crafted cases -------------------------------------------------------------------------


def _chunk(data: bytes, *, length: int, encoding: str, total: int | None = None) -> bytes:
    """A chunk payload with `data` as given and a correct digest (what a hostile edge sends)."""
    fields = {
        "job": "job1",
        "sender": "edge-3",
        "role": "update",
        "round": 3,
        "version": 2,
        "index": 0,
        "count": 1,
        "total": length if total is None else total,
        "offset": 0,
        "length": length,
        "encoding": encoding,
        "scale": 1.0,
        "num_samples": 114,
        "metrics": {},
        "digest": digest(data),
        "data": data,
        "sig": b"",
    }
    body = {"v": SCHEMA_VERSION, "k": "chunk", **{K[n]: v for n, v in fields.items()}}
    return bytes(msgpack.packb(body, use_bin_type=True))


def zstd_stream(total: int, *, declare: bool) -> bytes:
    """One zstd frame of `total` zero bytes, built in 1 MiB pieces (never `total` in memory)."""
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=declare)
    obj = cctx.compressobj(size=total if declare else -1)
    piece = bytes(MiB)
    parts = [obj.compress(piece[: min(MiB, total - i)]) for i in range(0, total, MiB)]
    return b"".join(parts) + obj.flush()


def _header_map(key: str, value: bytes) -> bytes:
    """{"v": 2, "k": "job", key: <value, already packed>}"""
    return bytes(
        b"\x83"
        + msgpack.packb("v")
        + msgpack.packb(SCHEMA_VERSION)
        + msgpack.packb("k")
        + msgpack.packb("job")
        + msgpack.packb(key)
        + value
    )


def crafted() -> list[tuple[str, bytes]]:
    ones = np.ones(1024, dtype=np.float32).tobytes()
    wide = b"\xdc\x27\x10" + b"\x90" * 10_000  # an array of 10,000 empty arrays
    wide_maps = b"\xdc\x27\x10" + b"\x80" * 10_000
    big_frame = zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters(window_log=27)
    ).compressobj()
    window = big_frame.compress(bytes(1024)) + big_frame.flush()
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"abcd"
    frame_4k = zstandard.ZstdCompressor().compress(bytes(4096))
    return [
        ("zstd bomb: 1 GiB of zeros, size not declared", _chunk(
            zstd_stream(1 << 30, declare=False), length=1024, encoding="fp32+zstd")),
        ("zstd bomb: 1 GiB of zeros, size declared", _chunk(
            zstd_stream(1 << 30, declare=True), length=1024, encoding="fp32+zstd")),
        ("largest legal chunk: 2^20 fp32 zeros, 4 MiB after zstd", _chunk(
            zstd_stream(4 << 20, declare=False), length=1 << 20, encoding="fp32+zstd")),
        ("zstd: 2^20 + 64 elements (over max_chunk_elems)", _chunk(
            frame_4k, length=(1 << 20) + 64, encoding="fp32+zstd")),
        ("zstd window 128 MiB", _chunk(window, length=256, encoding="fp32+zstd")),
        ("zstd: two frames", _chunk(frame_4k * 2, length=1024, encoding="fp32+zstd")),
        ("zstd: skippable frame only", _chunk(skippable, length=1024, encoding="fp32+zstd")),
        ("zstd: frame + skippable", _chunk(frame_4k + skippable, length=1024,
                                           encoding="fp32+zstd")),
        ("zstd: empty data", _chunk(b"", length=1024, encoding="fp32+zstd")),
        ("fp32 data one byte short", _chunk(ones[:-1], length=1024, encoding="fp32")),
        ("fp16 inf", _chunk(b"\x00\x7c" * 64, length=64, encoding="fp16")),
        ("bf16 nan", _chunk(b"\xc0\x7f" * 64, length=64, encoding="bf16")),
        ("int8 scale 1e308", msgpack.packb({**msgpack.unpackb(_chunk(
            b"\x7f" * 64, length=64, encoding="int8")), K["scale"]: 1e308}, use_bin_type=True)),
        ("array32 declaring 2^32-1 items", b"\xdd\xff\xff\xff\xff"),
        ("map32 declaring 2^32-1 entries", b"\xdf\xff\xff\xff\xff"),
        ("str32 declaring 4 GiB", b"\xdb\xff\xff\xff\xff"),
        ("bin32 declaring 4 GiB", b"\xc6\xff\xff\xff\xff"),
        ("ext32 declaring 4 GiB", b"\xc9\xff\xff\xff\xff\x01"),
        ("timestamp ext", msgpack.packb({"v": 2, "k": "status", "j": msgpack.Timestamp(1)})),
        ("100,000 nested arrays", b"\x91" * 100_000 + b"\xc0"),
        ("payload of max_payload + 1 bytes", b"\xc0" * (LIMITS.max_payload + 1)),
        ("trailing byte", encode(Control(job="j", command="stop")) + b"\xc0"),
        ("uint64 max version", msgpack.packb({"v": 2**64 - 1, "k": "control"})),
        ("v = true", msgpack.packb({"v": True, "k": "control"})),
        ("1 MiB: 104 x 10,000 empty arrays in a layout", _header_map(
            WIRE_KEYS[JobSpec]["layout"], b"\xdc\x00\x68" + wide * 104)),
        ("1 MiB: 104 x 10,000 empty maps in a layout", _header_map(
            WIRE_KEYS[JobSpec]["layout"], b"\xdc\x00\x68" + wide_maps * 104)),
    ]  # fmt: skip


# --- running cases ------------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    outcomes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    refixed: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    findings: list[tuple[str, str, bytes]] = dataclasses.field(default_factory=list)
    peak: int = 0  # bytes, the largest tracemalloc peak of one case
    peak_case: str = ""
    peaks: list[int] = dataclasses.field(default_factory=list)
    slowest: list[tuple[float, str, bytes]] = dataclasses.field(default_factory=list)  # top 5


def _values(chunk: TensorChunk) -> str:
    """'ok' or the error class; raises anything that is not a FedmqError."""
    try:
        values = chunk_values(chunk, LIMITS)
    except FedmqError as exc:
        return type(exc).__name__
    if values.dtype != np.float32 or values.shape != (chunk.length,):
        raise AssertionError(f"chunk_values gave {values.dtype} {values.shape}")
    if not np.isfinite(values).all():
        raise AssertionError("chunk_values let NaN/Inf through")
    return "ok"


def check(payload: bytes) -> tuple[str, str | None]:
    """(outcome, outcome with the digest recomputed) for one payload; raises on a finding."""
    try:
        msg = decode(payload, LIMITS)
    except FedmqError as exc:
        return f"decode: {type(exc).__name__}", None
    if not isinstance(msg, TensorChunk):
        return f"ok: {type(msg).__name__}", None
    outcome = _values(msg)
    fixed = digest(msg.data)
    refixed = _values(dataclasses.replace(msg, digest=fixed)) if fixed != msg.digest else outcome
    return ("ok: TensorChunk + values" if outcome == "ok" else f"values: {outcome}"), refixed


def run_one(tally: Tally, label: str, payload: bytes, mem_limit: int) -> str:
    """Check one payload, count its outcome and its peak allocation; returns the outcome."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        outcome, refixed = check(payload)
    except Exception as exc:  # the property under test: nothing but FedmqError escapes
        outcome, refixed = "FINDING", None
        tally.findings.append((label, f"{type(exc).__name__}: {exc}"[:300], payload))
    seconds = time.perf_counter() - t0
    if len(tally.slowest) < 5 or seconds > tally.slowest[0][0]:
        heapq.heappush(tally.slowest, (seconds, label, payload))
        if len(tally.slowest) > 5:
            heapq.heappop(tally.slowest)
    peak = tracemalloc.get_traced_memory()[1] - base
    tally.peaks.append(peak)
    if peak > tally.peak:
        tally.peak, tally.peak_case = peak, label
    if peak > mem_limit:
        tally.findings.append((label, f"allocated {peak / MiB:.1f} MiB", payload))
    tally.outcomes[outcome] += 1
    if refixed is not None:
        tally.refixed[refixed] += 1
    return outcome if refixed is None else f"{outcome} / refixed: {refixed}"


def report(title: str, tally: Tally, seconds: float, n: int) -> None:
    print(f"\n## {title}: {n} cases in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f}/s)\n")
    print("| outcome | cases |\n|---|---:|")
    for outcome, count in sorted(tally.outcomes.items(), key=lambda kv: -kv[1]):
        print(f"| {outcome} | {count} |")
    if tally.refixed:
        print("\nchunks that decoded, values checked again with the digest recomputed:\n")
        print("| outcome | cases |\n|---|---:|")
        for outcome, count in sorted(tally.refixed.items(), key=lambda kv: -kv[1]):
            print(f"| {outcome} | {count} |")
    peaks = np.array(tally.peaks or [0])
    print(
        f"\npeak traced allocation per case: median {np.median(peaks) / 1024:.1f} KiB,"
        f" p99 {np.percentile(peaks, 99) / 1024:.1f} KiB, max {tally.peak / MiB:.2f} MiB"
        f" ({tally.peak_case})"
    )
    # a slow case on a shared machine is often a GC pause or a neighbour: time it again
    for took, label, payload in sorted(tally.slowest, reverse=True)[:3]:
        again = []
        for _ in range(3):
            t0 = time.perf_counter()
            with contextlib.suppress(Exception):
                check(payload)
            again.append(time.perf_counter() - t0)
        print(
            f"slow case: {label}: {took * 1000:.1f} ms, re-timed {min(again) * 1000:.1f} ms"
            " (tracemalloc on)"
        )
    print(f"findings: {len(tally.findings)}")
    for label, what, payload in tally.findings[:20]:
        print(f"  - {label}: {what} (payload {len(payload)} bytes: {payload[:40].hex()}...)")


def replay(seed: int, i: int, pool: list[bytes]) -> tuple[bytes, str]:
    rng = random.Random(seed * 1_000_003 + i)
    return mutate(rng, pool)


# --- atheris ------------------------------------------------------------------------------------


def _instrument_codec(atheris: Any) -> int:
    """Coverage for the decoder only: every function and method defined in fedmq.codec.*.

    (`atheris.instrument_all()` would also instrument torch, loaded for the corpus: 70,000+
    functions, more than ten minutes before the first input.)
    """
    done: set[int] = set()
    for name, module in list(sys.modules.items()):
        if not (name == "fedmq.codec" or name.startswith("fedmq.codec.")):
            continue
        for obj in list(vars(module).values()):
            members = list(vars(obj).values()) if isinstance(obj, type) else [obj]
            for member in members:
                fn = getattr(member, "__func__", member)  # classmethod / staticmethod
                code = getattr(fn, "__code__", None)
                if code is None or not code.co_filename.startswith(
                    os.path.dirname(module.__file__ or "")
                ):
                    continue
                if id(fn) not in done:
                    atheris.instrument_func(fn)
                    done.add(id(fn))
    return len(done)


def run_atheris(pool: list[bytes], cases: int, seed: int, save: str | None) -> None:
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    def one_input(data: bytes) -> None:
        check(data)  # a non-FedmqError propagates: atheris reports it and saves the input

    def custom_mutator(data: bytes, max_size: int, mseed: int) -> bytes:
        rng = random.Random(mseed)
        if rng.random() < 0.5:
            out = bytes(atheris.Mutate(data, max_size))
        else:
            out = field_edit(rng, data, pool) if rng.random() < 0.7 else splice(rng, data, pool)
        return out[:max_size]

    # the seed corpus outlives the run (libFuzzer exits the process): under --save if given
    if save:
        seeds = os.path.join(save, "seeds")
        os.makedirs(seeds, exist_ok=True)
    else:
        seeds = tempfile.mkdtemp(prefix="fedmq-fuzz-corpus-")
    for i, payload in enumerate(pool):
        Path(seeds, f"seed{i:04d}").write_bytes(payload)
    count = _instrument_codec(atheris)
    argv = [
        sys.argv[0],
        f"-runs={cases}",
        f"-seed={seed + 1}",
        f"-max_len={LIMITS.max_payload}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={os.path.join(save or seeds, '')}",
        seeds,
    ]
    print(
        f"atheris: {count} functions of fedmq.codec instrumented; seed corpus of {len(pool)}"
        f" in {seeds}; {' '.join(argv[1:])}",
        flush=True,
    )
    atheris.Setup(argv, one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--mem-limit",
        type=float,
        default=32.0,
        help="MiB one case may allocate before it is a finding (default 32: 8x the 4 MiB of the"
        " largest legal chunk)",
    )
    ap.add_argument("--case", type=int, help="replay only mutated case number CASE")
    ap.add_argument("--save", metavar="DIR", help="write findings' payloads (or --case) here")
    ap.add_argument("--no-crafted", action="store_true", help="skip the hand-crafted cases")
    ap.add_argument("--atheris", action="store_true", help="coverage-guided, with libFuzzer")
    args = ap.parse_args()
    mem_limit = int(args.mem_limit * MiB)

    t0 = time.perf_counter()
    pool = corpus()
    kinds = collections.Counter(
        msgpack.unpackb(p, raw=False).get("encoding", msgpack.unpackb(p, raw=False)["k"])
        for p in pool
    )
    print(
        f"corpus: {len(pool)} real payloads ({sum(map(len, pool)) / MiB:.1f} MiB) in "
        f"{time.perf_counter() - t0:.1f} s; codecs {[str(s) for s in specs()]}; by kind/encoding"
        f" {dict(sorted(kinds.items()))}",
        flush=True,
    )
    if args.atheris:
        run_atheris(pool, args.cases, args.seed, args.save)
        return
    if args.case is not None:
        payload, how = replay(args.seed, args.case, pool)
        print(f"case {args.case}: {how}, {len(payload)} bytes")
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            Path(args.save, f"case{args.case}.bin").write_bytes(payload)
        print(check(payload))
        return

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    all_findings: list[tuple[str, str, bytes]] = []
    if not args.no_crafted:
        tally = Tally()
        t0 = time.perf_counter()
        for label, payload in crafted():
            outcome = run_one(tally, label, payload, mem_limit)
            peak = tally.peaks[-1] / MiB
            print(f"  {label}: {len(payload)} bytes -> {outcome}, peak {peak:.2f} MiB")
        report("hand-crafted", tally, time.perf_counter() - t0, len(tally.peaks))
        all_findings += tally.findings

    tally = Tally()
    t0 = time.perf_counter()
    for i in range(args.cases):
        payload, how = replay(args.seed, i, pool)
        run_one(tally, f"case {i} ({how})", payload, mem_limit)
        if (i + 1) % 20_000 == 0:
            print(f"  {i + 1} cases, {time.perf_counter() - t0:.0f} s", flush=True)
    report(f"mutated, seed {args.seed}", tally, time.perf_counter() - t0, args.cases)
    all_findings += tally.findings
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\nmax RSS: {rss0 / 1024:.0f} MiB before the cases, {rss1 / 1024:.0f} MiB after")
    if args.save and all_findings:
        os.makedirs(args.save, exist_ok=True)
        for n, (_, _, payload) in enumerate(all_findings):
            Path(args.save, f"finding{n:03d}.bin").write_bytes(payload)
    sys.exit(1 if all_findings else 0)


if __name__ == "__main__":
    main()
