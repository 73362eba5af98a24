"""Flat float32 vectors <-> chunk payloads, each guaranteed to fit one MQTT payload."""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedmq.codec.bounds import header_size_bound, min_payload
from fedmq.codec.envelope import check_limits, encode
from fedmq.codec.limits import ALIGN, DEFAULT_LIMITS, DIGEST_SIZE, Limits
from fedmq.codec.messages import TensorChunk
from fedmq.codec.spec import CodecSpec
from fedmq.codec.tensors import F32, SEED, decode_values, encode_chunk, max_data_bytes
from fedmq.errors import CodecError, DigestMismatch, LimitExceeded


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


@functools.lru_cache(maxsize=256)
def chunk_elems(spec: CodecSpec, max_payload: int) -> int:
    """Elements per chunk: the largest multiple of ALIGN whose worst-case data fits the room."""
    room = max_payload - header_size_bound(DEFAULT_LIMITS)
    lo, hi = 0, DEFAULT_LIMITS.max_chunk_elems // ALIGN  # in ALIGN blocks; bytes grow with n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if max_data_bytes(spec, mid * ALIGN) <= room:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        raise CodecError(
            f"max_payload {max_payload} cannot carry {ALIGN} {spec} values; "
            f"minimum is {min_payload(spec)}"
        )
    return lo * ALIGN


def split_vector(
    flat: F32,
    spec: CodecSpec,
    *,
    max_payload: int,
    job: str,
    sender: str,
    role: str,
    round: int,
    version: int,
    num_samples: int = 0,
    metrics: Mapping[str, float] | None = None,
    rng: np.random.Generator | None = None,
    decoded: F32 | None = None,
    signer: Callable[[TensorChunk], TensorChunk] | None = None,
    start: int = 0,
) -> list[bytes]:
    """Encode `flat` as chunk payloads of at most `max_payload` bytes each.

    The header bound covers any strings and metrics a TensorChunk accepts, and a chunk holds
    at most as many values as fit (max_payload - bound) bytes in their worst case; each chunk
    is sent in the smallest form its codec allows (`encode_chunk`: top-k or dense, zstd or
    raw), and its `encoding` says which. So every payload fits, whatever the data.

    `rng` feeds stochastic rounding (`int8:sr`, `int4:sr`), drawn chunk by chunk; None means
    `np.random.default_rng(0)`: reproducible, but the same draws on every call, so pass a
    generator seeded per round (and per sender) for rounding that averages out across rounds.
    `decoded`, a float32 array of flat's size, receives exactly what a receiver will decode
    (for `ErrorFeedback.update`). `signer` (see `signing.sign`) adds each chunk's signature.
    `start` (a multiple of ALIGN) sends only `flat[start:]`, e.g. the head of a model an edge
    trained alone: the chunks say where they lie, and `decoded[:start]` is set to zero.
    """
    if not isinstance(flat, np.ndarray) or flat.dtype != np.float32 or flat.ndim != 1:
        raise CodecError("split_vector needs a 1-D float32 numpy array")
    if decoded is not None and (
        not isinstance(decoded, np.ndarray)
        or decoded.dtype != np.float32
        or decoded.shape != flat.shape
    ):
        raise CodecError("split_vector: decoded must be a float32 array shaped like flat")
    limits = DEFAULT_LIMITS
    if flat.size > limits.max_params:
        raise LimitExceeded(f"vector of {flat.size} parameters > max_params {limits.max_params}")
    if start % ALIGN or not 0 <= start <= flat.size:
        raise CodecError(f"split_vector: start {start} must be a multiple of {ALIGN} in the vector")
    elems = chunk_elems(spec, max_payload)
    count = max(1, math.ceil((flat.size - start) / elems))
    if count > limits.max_chunks:
        raise LimitExceeded(f"{count} chunks > max_chunks {limits.max_chunks}; raise max_payload")
    if rng is None and spec.stochastic:
        rng = np.random.default_rng(SEED)  # one stream over all chunks, not one per chunk
    payloads: list[bytes] = []
    if decoded is not None:
        decoded[:start] = 0.0
    for index in range(count):
        offset = start + index * elems
        part = flat[offset : offset + elems]
        data, scale, used = encode_chunk(part, spec, rng=rng)
        if decoded is not None:
            decoded[offset : offset + part.size] = decode_values(data, used, part.size, scale)
        chunk = TensorChunk(
            job=job,
            sender=sender,
            role=role,
            round=round,
            version=version,
            index=index,
            count=count,
            total=flat.size,
            offset=offset,
            length=part.size,
            encoding=str(used),
            scale=scale,
            num_samples=num_samples,
            metrics=dict(metrics or {}) if index == 0 else {},
            digest=digest(data),
            data=data,
        )
        if signer is not None:
            chunk = signer(chunk)
        payload = encode(chunk)
        if len(payload) > max_payload:  # unreachable by the bound above; never send it anyway
            raise CodecError(f"internal: chunk payload {len(payload)} > max_payload {max_payload}")
        payloads.append(payload)
    return payloads


def chunk_values(
    chunk: TensorChunk, limits: Limits = DEFAULT_LIMITS, *, require_finite: bool = True
) -> F32:
    """The float32 values of one chunk, shape (length,), after every check of docs/protocol.md."""
    check_limits(chunk, limits)  # geometry (offset, index, ends) was checked by TensorChunk itself
    if digest(chunk.data) != chunk.digest:
        raise DigestMismatch(f"chunk {chunk.index}/{chunk.count} of {chunk.sender}: bad digest")
    values = decode_values(
        chunk.data, CodecSpec.parse(chunk.encoding), chunk.length, chunk.scale, limits
    )
    if require_finite and not np.isfinite(values).all():
        raise CodecError(f"chunk {chunk.index}/{chunk.count} of {chunk.sender}: NaN or Inf")
    return values


_SAME = ("job", "sender", "role", "round", "version", "total", "count")


def assemble(
    chunks: Sequence[TensorChunk], limits: Limits = DEFAULT_LIMITS, *, require_finite: bool = True
) -> F32:
    """The full float32 vector from all chunks of it, which must tile [0, total) exactly."""
    if not chunks:
        raise CodecError("assemble needs at least one chunk")
    first = chunks[0]
    for chunk in chunks:
        check_limits(chunk, limits)
        for name in _SAME:
            if getattr(chunk, name) != getattr(first, name):
                raise CodecError(f"chunks disagree on {name}: {getattr(chunk, name)!r}")
    if len(chunks) != first.count:
        raise CodecError(f"{len(chunks)} chunks given, the vector has {first.count}")
    ordered = sorted(chunks, key=lambda c: c.index)
    end = 0
    for want, chunk in enumerate(ordered):
        if chunk.index != want:
            raise CodecError(f"chunk index {want} missing or repeated")
        if chunk.offset != end:
            raise CodecError(f"chunk {want} starts at {chunk.offset}, expected {end}")
        end += chunk.length
    if end != first.total:  # unreachable: the last chunk ends at total by construction
        raise CodecError(f"chunks cover [0, {end}), expected [0, {first.total})")
    out = np.empty(first.total, dtype=np.float32)
    for chunk in ordered:
        values = chunk_values(chunk, limits, require_finite=require_finite)
        out[chunk.offset : chunk.offset + chunk.length] = values
    return out
