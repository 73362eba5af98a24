"""Value encodings: a 1-D float32 slice <-> the `data` bytes of one chunk (see docs/protocol.md §5).

A dense chunk is the value stage's bytes of every element. A top-k chunk is
`form | varint k | indices | values`: the indices of the kept elements as gap varints or a
bitmap, then the value stage's bytes of the k kept elements. `zstd` byte-shuffles the value
bytes and compresses the whole in one frame. Decoding checks every declared size against the
chunk length before it allocates anything.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import zstandard

from fedmq.codec.limits import DEFAULT_LIMITS, Limits
from fedmq.codec.spec import CodecSpec
from fedmq.errors import CodecError, LimitExceeded

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

ZSTD_LEVEL = 3
# Largest zstd window a decoder accepts (windowLog 23). Our frames declare their content size, so
# zstd sizes the window to it: at most 2 MiB at level 3 even for a 4 MiB chunk.
MAX_WINDOW = 1 << 23
# Levels of the symmetric quantisers: q in [-LEVELS, LEVELS]; decoders also accept -LEVELS - 1.
LEVELS = {"int8": 127, "int4": 7}
# The sign stage's scale when every value is 0: the smallest positive double, which the scale
# field can carry (it must be > 0) and which every value decodes from to float32 0.0.
SIGN_ZERO_SCALE = math.ulp(0.0)
GAPS, BITMAP = 0, 1  # the first byte of a top-k chunk: how its indices are written
SEED = 0  # stochastic rounding without a caller's generator draws from default_rng(SEED)


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
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(itemsize, -1)
    out = np.empty((planes.shape[1], itemsize), dtype=np.uint8)
    for b in range(itemsize):  # one strided write per plane: ~4x faster than planes.T.tobytes()
        out[:, b] = planes[b]
    return out.tobytes()


# ---- varints (unsigned LEB128, minimal) --------------------------------------------------------


def varint_len(value: int) -> int:
    """Bytes of `value` as a minimal unsigned LEB128 varint."""
    return max(1, (value.bit_length() + 6) // 7)


def write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(raw: bytes, pos: int, what: str) -> tuple[int, int]:
    """One minimal varint of at most 9 bytes at raw[pos:]; returns (value, next position)."""
    value = 0
    for i in range(9):
        if pos + i >= len(raw):
            raise CodecError(f"top-k chunk: {what} varint is truncated")
        byte = raw[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if i and byte == 0:
                raise CodecError(f"top-k chunk: {what} varint is not minimal")
            return value, pos + i + 1
    raise CodecError(f"top-k chunk: {what} varint is longer than 9 bytes")


def _varint_sizes(values: I64) -> I64:
    sizes = np.ones(values.size, dtype=np.int64)
    top = int(values.max()) if values.size else 0
    for shift in range(7, max(top.bit_length(), 1), 7):
        sizes += values >= (1 << shift)
    return sizes


def _write_varints(values: I64, sizes: I64) -> bytes:
    """Many varints, vectorised: byte b of value j is bits [7b, 7b+7), high bit = more follows."""
    ends = np.cumsum(sizes)
    out = np.empty(int(ends[-1]) if values.size else 0, dtype=np.uint8)
    starts = ends - sizes
    for b in range(int(sizes.max()) if values.size else 0):
        sel = sizes > b
        more = np.where(sizes[sel] > b + 1, 0x80, 0)
        out[starts[sel] + b] = ((values[sel] >> (7 * b)) & 0x7F) | more
    return out.tobytes()


# ---- value stages: float32 <-> stored bytes --------------------------------------------------


def _quantize(values: F32, levels: int, stochastic: bool, rng: np.random.Generator | None) -> tuple[
    npt.NDArray[np.int8], float
]:  # fmt: skip
    """Symmetric absmax: scale = max|x| / levels (1.0 if all zero), q = round(x / scale)."""
    absmax = float(np.max(np.abs(values))) if values.size else 0.0
    scale = absmax / levels if absmax > 0.0 else 1.0
    x = values.astype(np.float64)
    x /= scale
    if stochastic:  # floor(y + u), u ~ U[0, 1): rounds up with probability frac(y), unbiased
        x += (rng if rng is not None else np.random.default_rng(SEED)).random(x.size)
        np.floor(x, out=x)
    else:  # nearest, ties to even
        np.rint(x, out=x)
    np.clip(x, -levels, levels, out=x)
    return x.astype(np.int8), scale


def _store(values: F32, spec: CodecSpec, rng: np.random.Generator | None) -> tuple[bytes, float]:
    """The value stage's raw bytes of `values` and the chunk's scale."""
    dtype = spec.dtype
    if dtype == "fp32":
        return values.astype("<f4", copy=False).tobytes(), 1.0
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
    if dtype == "sign":  # bit i set when x_i < 0 (so -0.0 and 0.0 are +), LSB first
        mean = float(np.mean(np.abs(values), dtype=np.float64)) if values.size else 0.0
        packed = np.packbits(values < 0, bitorder="little")
        return packed.tobytes(), mean if mean > 0.0 else SIGN_ZERO_SCALE
    q, scale = _quantize(values, LEVELS[dtype], spec.stochastic, rng)
    if dtype == "int8":
        return q.tobytes(), scale
    nibbles = (q.view(np.uint8) & 0x0F).astype(np.uint8)  # int4: two's complement nibbles
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes(), scale


def _dequantize(q: npt.NDArray[np.int8], scale: float) -> F32:
    with np.errstate(over="ignore"):
        return (q.astype(np.float64) * scale).astype(np.float32)


def _load(raw: bytes, dtype: str, n: int, scale: float) -> F32:
    """n float32 values from exactly the value stage's bytes of n values (length checked)."""
    if dtype == "fp32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if dtype == "fp16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if dtype == "bf16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    if dtype == "int8":
        return _dequantize(np.frombuffer(raw, dtype=np.int8), scale)
    packed = np.frombuffer(raw, dtype=np.uint8)
    if dtype == "sign":
        if n % 8 and packed[-1] >> (n % 8):
            raise CodecError("sign chunk: padding bits after the last value are not 0")
        negative = np.unpackbits(packed, count=n, bitorder="little").view(np.bool_)
        with np.errstate(over="ignore"):
            magnitude = np.float32(scale)
        return np.where(negative, -magnitude, magnitude).astype(np.float32)
    # int4: low nibble first, two's complement
    if n % 2 and packed[-1] >> 4:
        raise CodecError("int4 chunk: the padding nibble after the last value is not 0")
    nibbles = np.empty(packed.size * 2, dtype=np.int8)
    nibbles[0::2] = packed & 0x0F
    nibbles[1::2] = packed >> 4
    nibbles[nibbles >= 8] -= 16
    return _dequantize(nibbles[:n], scale)


# ---- top-k: which elements, and how their indices are written ---------------------------------


def select_topk(values: F32, keep: int) -> npt.NDArray[np.intp]:
    """Sorted indices of the `keep` largest |x|; ties at the threshold go to lower indices.

    Zeros are never kept (they decode to 0 anyway), so fewer than `keep` may come back.
    """
    mag = np.abs(values)
    nonzero = np.flatnonzero(mag)
    if keep >= nonzero.size:
        return nonzero
    if keep <= 0:
        return np.zeros(0, dtype=np.intp)
    # Select among the non-zero magnitudes only: numpy's introselect degrades badly on many
    # interleaved equal values, such as the zeros of weights that never get a gradient.
    mag = mag[nonzero]
    threshold = np.partition(mag, mag.size - keep)[mag.size - keep]  # keep-th largest
    mask = mag > threshold
    ties = np.flatnonzero(mag == threshold)[: keep - int(np.count_nonzero(mask))]
    mask[ties] = True
    kept: npt.NDArray[np.intp] = nonzero[mask]
    return kept


def _index_bytes(idx: npt.NDArray[np.intp], n: int) -> tuple[int, bytes]:
    """(form, bytes) of sorted indices: gap varints, or a bitmap when that is strictly shorter."""
    gaps = np.empty(idx.size, dtype=np.int64)  # index_j - index_{j-1} - 1 >= 0, index_-1 = -1
    if idx.size:
        gaps[0] = idx[0]
        np.subtract(idx[1:], idx[:-1] + 1, out=gaps[1:])
    sizes = _varint_sizes(gaps)
    if int(sizes.sum()) <= (n + 7) // 8:
        return GAPS, _write_varints(gaps, sizes)
    mask = np.zeros(n, dtype=np.bool_)
    mask[idx] = True
    return BITMAP, np.packbits(mask, bitorder="little").tobytes()


def _read_gaps(section: U8, k: int, n: int) -> tuple[npt.NDArray[np.int64], int]:
    """k gap varints from the start of `section`; returns (indices, bytes used)."""
    if k == 0:
        return np.zeros(0, dtype=np.int64), 0
    ends = np.flatnonzero(section < 0x80)[:k]  # the last byte of each varint
    if ends.size < k:
        raise CodecError(f"top-k chunk: {k} index varints do not fit in {section.size} bytes")
    lengths = np.diff(ends, prepend=-1)
    if int(lengths.max()) > varint_len(max(n - 1, 0)):
        raise CodecError(f"top-k chunk: an index gap varint is too long for length {n}")
    if ((lengths > 1) & (section[ends] == 0)).any():
        raise CodecError("top-k chunk: an index gap varint is not minimal")
    used = int(ends[-1]) + 1
    body = section[:used].astype(np.int64)
    starts = ends - lengths + 1
    place = np.arange(used, dtype=np.int64) - np.repeat(starts, lengths)
    gaps = np.add.reduceat((body & 0x7F) << (7 * place), starts)
    if int(gaps.max()) >= n:  # also keeps the running sum below n * n: no int64 overflow
        raise CodecError(f"top-k chunk: an index is out of range for length {n}")
    idx = np.cumsum(gaps + 1) - 1  # strictly increasing by construction
    if int(idx[-1]) >= n:
        raise CodecError(f"top-k chunk: index {int(idx[-1])} is out of range for length {n}")
    return idx, used


def _read_bitmap(section: U8, k: int, n: int) -> npt.NDArray[np.intp]:
    if section.size != (n + 7) // 8:
        raise CodecError("top-k chunk: the index bitmap is truncated")
    if n % 8 and section[-1] >> (n % 8):
        raise CodecError(f"top-k chunk: the index bitmap marks an index >= length {n}")
    bits = np.unpackbits(section, count=n, bitorder="little")
    idx = np.flatnonzero(bits)
    if idx.size != k:
        raise CodecError(f"top-k chunk: the bitmap marks {idx.size} indices, header says {k}")
    return idx


def sparse_bound(spec: CodecSpec, n: int, k: int) -> int:
    """Most bytes a top-k chunk of n values keeping at most k takes before zstd."""
    indices = min((n + 7) // 8, k * varint_len(max(n - 1, 0)))
    return 1 + varint_len(k) + indices + spec.value_bytes(k)


def max_data_bytes(spec: CodecSpec, n: int) -> int:
    """Most bytes of `data` that `encode_chunk` writes for n values of `spec` (zstd or not)."""
    dense = spec.value_bytes(n)
    if spec.topk is None:
        return dense
    return min(dense, sparse_bound(spec, n, spec.keep(n)))


# ---- encoding ---------------------------------------------------------------------------------


class _Contexts(threading.local):
    """zstd contexts cost ~50 us to make and must not be shared between threads: one each."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)


_CONTEXTS = _Contexts()


def _zstd(sections: Sequence[bytes | memoryview]) -> bytes:
    """One zstd frame (content size declared) of the sections joined, a block ending after each.

    The frame's content is just the joined bytes; ending a block at every byte plane gives each
    plane its own literal (Huffman) table, which the shuffle is for: a 128 KiB fp32 chunk of
    deltas compresses 1.18x instead of 1.10x when its four planes shared one block.
    """
    parts = [part for part in sections if memoryview(part).nbytes]
    if len(parts) <= 1:  # one block-run anyway: the one-shot call is ~3x cheaper on small chunks
        return bytes(_CONTEXTS.compressor.compress(parts[0] if parts else b""))
    total = sum(memoryview(part).nbytes for part in parts)
    cobj = _CONTEXTS.compressor.compressobj(size=total)
    out = []
    for part in parts:
        out.append(cobj.compress(part))
        out.append(cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    out.append(cobj.flush())
    return b"".join(out)


def _planes(stored: bytes, width: int) -> list[memoryview]:
    """The byte planes of the shuffle (all first bytes, then all second bytes...), no copies."""
    shuffled = np.ascontiguousarray(np.frombuffer(stored, dtype=np.uint8).reshape(-1, width).T)
    return [memoryview(plane) for plane in shuffled]


def _parts(
    values: F32, spec: CodecSpec, rng: np.random.Generator | None, *, fallback: bool
) -> tuple[bytes, bytes, float, CodecSpec]:
    """(head, stored, scale, spec used): a chunk is head + stored (value bytes) before zstd.

    head is b"" for a dense chunk, else the top-k form byte, varint k and the indices. With
    `fallback`, a top-k chunk that is not strictly smaller than dense is made dense instead.
    """
    n = values.size
    if spec.topk is None:
        stored, scale = _store(values, spec, rng)
        return b"", stored, scale, spec
    idx = select_topk(values, spec.keep(n))
    form, index = _index_bytes(idx, n)
    head = bytes([form]) + write_varint(idx.size) + index
    if fallback and len(head) + spec.value_bytes(idx.size) >= spec.value_bytes(n):
        stored, scale = _store(values, spec.dense, rng)
        return b"", stored, scale, spec.dense
    stored, scale = _store(values[idx], spec, rng)
    return head, stored, scale, spec


def encode_values(
    values: F32, spec: CodecSpec, *, rng: np.random.Generator | None = None
) -> tuple[bytes, float]:
    """Encode a 1-D float32 slice exactly as `spec` says; returns (data, scale). Rejects NaN/Inf.

    `rng` feeds stochastic rounding (`int8:sr`, `int4:sr`); None means a fresh
    `np.random.default_rng(SEED)`, so the same input always gives the same bytes.
    """
    values = _check_input(values)
    head, stored, scale, _ = _parts(values, spec, rng, fallback=False)
    if spec.zstd:
        return _zstd([head, *_planes(stored, spec.shuffle_width)]), scale
    return head + stored, scale


def encode_chunk(
    values: F32, spec: CodecSpec, *, rng: np.random.Generator | None = None
) -> tuple[bytes, float, CodecSpec]:
    """Encode in the smallest form `spec` allows; returns (data, scale, the spec actually used).

    A top-k chunk whose sparse bytes would not be strictly smaller than the dense value bytes
    is sent dense (`spec.dense`: every value, same value stage); a chunk that zstd does not make
    strictly smaller is sent raw (`spec.raw`). So len(data) <= max_data_bytes(spec, n).
    Stochastic rounding draws once per stored value from `rng` (None: default_rng(SEED)).
    """
    values = _check_input(values)
    head, stored, scale, used = _parts(values, spec, rng, fallback=True)
    if used.zstd:
        frame = _zstd([head, *_planes(stored, used.shuffle_width)])
        if len(frame) < len(head) + len(stored):
            return frame, scale, used
        used = used.raw
    return head + stored, scale, used


# ---- decoding ---------------------------------------------------------------------------------


def _inflate(data: bytes, expected: int, *, exact: bool = True) -> bytes:
    """Decompress exactly one zstd frame into `expected` bytes (at most, if not exact).

    Never allocates more than max(expected, 1) bytes whatever the frame claims.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise CodecError("chunk data is not a zstd frame") from exc
    if 0 <= declared < zstandard.CONTENTSIZE_ERROR and (
        declared != expected if exact else declared > expected
    ):
        need = f"{expected}" if exact else f"at most {expected}"
        raise CodecError(f"zstd frame declares {declared} bytes, chunk needs {need}")
    try:
        # content size known: allocates exactly `declared` (<= expected); unknown: allocates
        # max_output_size and fails if the frame produces more. Never 0: 0 means "unbounded".
        out = _CONTEXTS.decompressor.decompress(
            data, max_output_size=max(expected, 1), allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise CodecError(f"bad zstd frame: {exc}") from exc
    if len(out) > expected or (exact and len(out) != expected):
        raise CodecError(f"zstd frame produced {len(out)} bytes, chunk needs {expected}")
    return bytes(out)


def _decode_sparse(data: bytes, spec: CodecSpec, n: int, scale: float) -> F32:
    """A top-k chunk: every count is checked against n before the output is allocated."""
    bitmap = (n + 7) // 8
    bound = 1 + varint_len(n) + bitmap + spec.value_bytes(n)  # any valid chunk, k <= n
    if spec.zstd:
        raw = _inflate(data, bound, exact=False)
    elif len(data) > bound:
        raise CodecError(f"top-k chunk data is {len(data)} bytes, length {n} allows {bound}")
    else:
        raw = data
    if not raw:
        raise CodecError("top-k chunk data is empty")
    form = raw[0]
    if form not in (GAPS, BITMAP):
        raise CodecError(f"top-k chunk: unknown index form {form}")
    k, pos = _read_varint(raw, 1, "k")
    if k > n:
        raise CodecError(f"top-k chunk declares {k} values, chunk length is {n}")
    section = np.frombuffer(raw, dtype=np.uint8)[pos : pos + bitmap]
    if form == GAPS:
        idx, used = _read_gaps(section, k, n)
    else:
        idx, used = _read_bitmap(section, k, n), bitmap
    stored = raw[pos + used :]
    if len(stored) != spec.value_bytes(k):
        raise CodecError(
            f"top-k chunk carries {len(stored)} value bytes, {k} x {spec.dtype} needs "
            f"{spec.value_bytes(k)}"
        )
    if spec.zstd:
        stored = unshuffle(stored, spec.shuffle_width)
    out = np.zeros(n, dtype=np.float32)
    out[idx] = _load(stored, spec.dtype, k, scale)
    return out


def decode_values(
    data: bytes, spec: CodecSpec, length: int, scale: float, limits: Limits = DEFAULT_LIMITS
) -> F32:
    """Decode `data` into a float32 array of shape (length,); every size is checked first.

    A top-k chunk decodes to a dense slice with 0.0 wherever nothing was sent.
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise CodecError(f"length must be a non-negative int, got {length!r}")
    if length > limits.max_chunk_elems:
        raise LimitExceeded(f"chunk length {length} > max_chunk_elems {limits.max_chunk_elems}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"data must be bytes, got {type(data).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise CodecError(f"scale must be a finite float, got {scale!r}")
    if spec.scaled and not scale > 0.0:
        raise CodecError(f"{spec.dtype} scale must be > 0, got {scale!r}")
    if not spec.scaled and scale != 1.0:
        raise CodecError(f"scale must be 1.0 for {spec.dtype}, got {scale!r}")
    data = bytes(data)
    if spec.topk is not None:
        return _decode_sparse(data, spec, length, float(scale))
    expected = spec.value_bytes(length)
    if spec.zstd:
        data = unshuffle(_inflate(data, expected), spec.shuffle_width)
    elif len(data) != expected:
        raise CodecError(
            f"chunk data is {len(data)} bytes, {length} x {spec.dtype} needs {expected}"
        )
    return _load(data, spec.dtype, length, float(scale))
