"""Value encodings: a 1-D float32 slice <-> the `data` bytes of one chunk (see docs/protocol.md)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import zstandard

from fedmq.codec.limits import DEFAULT_LIMITS, Limits
from fedmq.codec.spec import CodecSpec
from fedmq.errors import CodecError, LimitExceeded

F32 = npt.NDArray[np.float32]

ZSTD_LEVEL = 3
# Largest zstd window a decoder accepts (windowLog 23). Our encoder writes single-shot frames whose
# window is at most the content size (<= 4 MiB); a streaming encoder at level <= 19 stays under it.
MAX_WINDOW = 1 << 23


def _check_input(values: object) -> F32:
    if not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.ndim != 1:
        raise CodecError("values must be a 1-D float32 numpy array")
    if not np.isfinite(values).all():
        raise CodecError("values contain NaN or Inf; refusing to encode them")
    return values


def shuffle(raw: bytes, itemsize: int) -> bytes:
    """Byte i*itemsize+b of `raw` goes to b*n+i: all first bytes, then all second bytes..."""
    if itemsize == 1:
        return raw
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, itemsize).T.tobytes()


def unshuffle(raw: bytes, itemsize: int) -> bytes:
    if itemsize == 1:
        return raw
    return np.frombuffer(raw, dtype=np.uint8).reshape(itemsize, -1).T.tobytes()


def _store(values: F32, dtype: str) -> tuple[bytes, float]:
    if dtype == "fp32":
        return values.astype("<f4").tobytes(), 1.0
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            half = values.astype("<f2")
        if not np.isfinite(half).all():
            raise CodecError("values exceed the fp16 range (|x| > 65504)")
        return half.tobytes(), 1.0
    if dtype == "bf16":
        bits = values.astype("<f4").view("<u4").astype(np.uint64)
        top = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest, ties to even
        if ((top & 0x7F80) == 0x7F80).any():
            raise CodecError("values exceed the bf16 range after rounding")
        return top.astype("<u2").tobytes(), 1.0
    # int8: symmetric absmax, q = rint(x / scale) in [-127, 127]
    absmax = float(np.max(np.abs(values))) if values.size else 0.0
    scale = absmax / 127.0 if absmax > 0.0 else 1.0
    q = np.clip(np.rint(values.astype(np.float64) / scale), -127, 127)
    return q.astype(np.int8).tobytes(), scale


def encode_values(values: F32, spec: CodecSpec) -> tuple[bytes, float]:
    """Encode a 1-D float32 slice as `spec` says; returns (data, scale). Rejects NaN/Inf."""
    raw, scale = _store(_check_input(values), spec.dtype)
    if spec.zstd:
        shuffled = shuffle(raw, spec.bytes_per_value)
        raw = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(shuffled)
    return raw, scale


def _inflate(data: bytes, expected: int) -> bytes:
    """Decompress exactly one zstd frame into exactly `expected` bytes, never allocating more."""
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise CodecError("chunk data is not a zstd frame") from exc
    if 0 <= declared < zstandard.CONTENTSIZE_ERROR and declared != expected:
        raise CodecError(f"zstd frame declares {declared} bytes, chunk needs {expected}")
    try:
        # content size known: allocates exactly `declared` (== expected); unknown: allocates
        # max_output_size and fails if the frame produces more. Never 0: 0 means "unbounded".
        out = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).decompress(
            data, max_output_size=max(expected, 1), allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise CodecError(f"bad zstd frame: {exc}") from exc
    if len(out) != expected:
        raise CodecError(f"zstd frame produced {len(out)} bytes, chunk needs {expected}")
    return out


def decode_values(
    data: bytes, spec: CodecSpec, length: int, scale: float, limits: Limits = DEFAULT_LIMITS
) -> F32:
    """Decode `data` into a float32 array of shape (length,); every size is checked first."""
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise CodecError(f"length must be a non-negative int, got {length!r}")
    if length > limits.max_chunk_elems:
        raise LimitExceeded(f"chunk length {length} > max_chunk_elems {limits.max_chunk_elems}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"data must be bytes, got {type(data).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise CodecError(f"scale must be a finite float, got {scale!r}")
    if spec.dtype == "int8" and not scale > 0.0:
        raise CodecError(f"int8 scale must be > 0, got {scale!r}")
    if spec.dtype != "int8" and scale != 1.0:
        raise CodecError(f"scale must be 1.0 for {spec.dtype}, got {scale!r}")
    data = bytes(data)
    itemsize = spec.bytes_per_value
    expected = length * itemsize
    if spec.zstd:
        data = unshuffle(_inflate(data, expected), itemsize)
    elif len(data) != expected:
        raise CodecError(
            f"chunk data is {len(data)} bytes, {length} x {spec.dtype} needs {expected}"
        )
    if spec.dtype == "fp32":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if spec.dtype == "fp16":
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    if spec.dtype == "bf16":
        bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    with np.errstate(over="ignore"):
        q = np.frombuffer(data, dtype=np.int8).astype(np.float64)
        return (q * scale).astype(np.float32)
