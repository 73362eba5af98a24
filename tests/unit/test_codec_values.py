"""Value encodings: precision of each codec, exact byte layouts, bounded zstd decompression."""

import re
import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmq.codec import CodecSpec, decode_values, encode_values
from fedmq.codec.tensors import shuffle, unshuffle
from fedmq.errors import CodecError, LimitExceeded

pytestmark = pytest.mark.unit

ALL = ["fp32", "fp32+zstd", "fp16", "fp16+zstd", "bf16", "bf16+zstd", "int8", "int8+zstd"]

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
vectors = hnp.arrays(np.float32, st.integers(0, 300), elements=finite_f32)
small_vectors = hnp.arrays(
    np.float32, st.integers(0, 300), elements=st.floats(-60000, 60000, width=32)
)


BF16_SAFE = float(np.float32(3e38))  # rounds to a finite bf16


def round_trip(values: np.ndarray, text: str) -> tuple[np.ndarray, float]:
    spec = CodecSpec.parse(text)
    data, scale = encode_values(values, spec)
    out = decode_values(data, spec, values.size, scale)
    assert out.dtype == np.float32
    assert out.shape == values.shape
    return out, scale


def bf16_reference(values: np.ndarray) -> np.ndarray:
    """Nearest bf16, ties to even, written independently of the codec's formula."""
    bits = values.view(np.uint32).astype(np.int64)
    low, rem = bits & ~0xFFFF, bits & 0xFFFF
    up = (rem > 0x8000) | ((rem == 0x8000) & ((low >> 16) & 1 == 1))
    out: np.ndarray = (low + up * 0x10000).astype(np.uint32).view(np.float32)
    return out


@settings(max_examples=60, deadline=None)
@given(vectors, st.sampled_from(["fp32", "fp32+zstd"]))
def test_fp32_is_bit_exact(values: np.ndarray, text: str) -> None:
    out, scale = round_trip(values, text)
    assert scale == 1.0
    assert out.tobytes() == values.tobytes()


@settings(max_examples=60, deadline=None)
@given(small_vectors, st.sampled_from(["fp16", "fp16+zstd"]))
def test_fp16_is_nearest_half(values: np.ndarray, text: str) -> None:
    out, _ = round_trip(values, text)
    np.testing.assert_array_equal(out, values.astype(np.float16).astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32, st.integers(0, 300), elements=st.floats(-BF16_SAFE, BF16_SAFE, width=32)
    ),
    st.sampled_from(["bf16", "bf16+zstd"]),
)
def test_bf16_is_nearest_even(values: np.ndarray, text: str) -> None:
    out, _ = round_trip(values, text)
    np.testing.assert_array_equal(out, bf16_reference(values))
    err = np.abs(out.astype(np.float64) - values)
    assert np.all(err <= np.maximum(np.abs(values) * 2.0**-8, 2.0**-134))  # subnormals: half ulp


@settings(max_examples=80, deadline=None)
@given(vectors, st.sampled_from(["int8", "int8+zstd"]))
def test_int8_error_is_at_most_half_a_step(values: np.ndarray, text: str) -> None:
    out, scale = round_trip(values, text)
    absmax = float(np.max(np.abs(values))) if values.size else 0.0
    assert scale == (absmax / 127 if absmax > 0 else 1.0)
    err = np.abs(out.astype(np.float64) - values.astype(np.float64))
    # half a quantisation step, plus the float32 rounding of q * scale (|q| <= 127)
    assert np.all(err <= scale * (0.5 + 2.0**-16))


def test_byte_layouts_are_little_endian_as_documented() -> None:
    one_two = np.array([1.0, 2.0], dtype=np.float32)
    assert encode_values(one_two, CodecSpec("fp32"))[0] == bytes.fromhex("0000803f00000040")
    assert encode_values(one_two, CodecSpec("fp16"))[0] == bytes.fromhex("003c0040")
    assert encode_values(one_two, CodecSpec("bf16"))[0] == bytes.fromhex("803f0040")
    data, scale = encode_values(np.array([1.0, -0.5, 0.0], np.float32), CodecSpec("int8"))
    assert data == bytes([127, 256 - 64, 0])  # rint(-63.5) = -64: ties to even
    assert scale == 1.0 / 127
    zero = encode_values(np.zeros(5, np.float32), CodecSpec("int8"))
    assert zero == (bytes(5), 1.0)


def test_bf16_ties_go_to_even() -> None:
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8)], dtype=np.float32)
    out, _ = round_trip(x, "bf16")
    np.testing.assert_array_equal(out, np.array([1.0, 1 + 2**-6, -1.0], dtype=np.float32))


def test_shuffle_definition_and_zstd_frame() -> None:
    raw = bytes.fromhex("0000803f00000040")  # fp32 [1.0, 2.0]
    assert shuffle(raw, 4) == bytes([0, 0, 0, 0, 0x80, 0, 0x3F, 0x40])
    assert unshuffle(shuffle(raw, 4), 4) == raw
    assert shuffle(raw, 1) == raw
    data, _ = encode_values(np.array([1.0, 2.0], np.float32), CodecSpec("fp32", zstd=True))
    assert zstandard.frame_content_size(data) == 8  # a standard frame with its content size
    assert zstandard.ZstdDecompressor().decompress(data) == shuffle(raw, 4)


def test_shuffle_zstd_shrinks_a_realistic_delta() -> None:
    delta = np.random.default_rng(0).normal(0, 1e-3, 100_000).astype(np.float32)
    packed, _ = encode_values(delta, CodecSpec("fp32", zstd=True))
    plain = zstandard.ZstdCompressor(level=3).compress(delta.tobytes())
    assert len(packed) < 0.9 * delta.nbytes
    assert len(packed) < len(plain)  # the byte shuffle is what helps
    assert decode_values(packed, CodecSpec("fp32", zstd=True), delta.size, 1.0).tobytes() == (
        delta.tobytes()
    )


@pytest.mark.parametrize("text", ALL)
def test_encode_rejects_non_finite_and_bad_input(text: str) -> None:
    spec = CodecSpec.parse(text)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(CodecError, match="NaN or Inf"):
            encode_values(np.array([0.0, bad], np.float32), spec)
    with pytest.raises(CodecError, match="1-D float32"):
        encode_values(np.zeros(3, np.float64), spec)
    with pytest.raises(CodecError, match="1-D float32"):
        encode_values(np.zeros((2, 2), np.float32), spec)


def test_encode_rejects_values_out_of_half_range() -> None:
    big = np.array([70000.0], np.float32)
    with pytest.raises(CodecError, match="fp16 range"):
        encode_values(big, CodecSpec("fp16"))
    with pytest.raises(CodecError, match="bf16 range"):
        encode_values(np.array([np.finfo(np.float32).max], np.float32), CodecSpec("bf16"))


@pytest.mark.parametrize("text", ALL)
def test_decode_rejects_wrong_sizes(text: str) -> None:
    spec = CodecSpec.parse(text)
    data, scale = encode_values(np.arange(128, dtype=np.float32), spec)
    for length in (127, 129, 0, 10_000):
        with pytest.raises(CodecError):
            decode_values(data, spec, length, scale)
    with pytest.raises(CodecError):
        decode_values(data[:-1], spec, 128, scale)
    with pytest.raises(CodecError):
        decode_values(data + b"\x00", spec, 128, scale)
    with pytest.raises(LimitExceeded):
        decode_values(data, spec, (1 << 20) + 1, scale)
    with pytest.raises(CodecError):
        decode_values(data, spec, -1, scale)
    with pytest.raises(CodecError):
        decode_values("text", spec, 4, scale)  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        decode_values(10**9, spec, 4, scale)  # type: ignore[arg-type]


def test_decode_checks_scale() -> None:
    data, _ = encode_values(np.ones(4, np.float32), CodecSpec("int8"))
    for scale in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(CodecError, match="scale"):
            decode_values(data, CodecSpec("int8"), 4, scale)
    raw = np.ones(4, np.float32).tobytes()
    with pytest.raises(CodecError, match=re.escape("scale must be 1.0")):
        decode_values(raw, CodecSpec("fp32"), 4, 2.0)


def test_zstd_lies_and_garbage_are_rejected() -> None:
    spec = CodecSpec("fp32", zstd=True)
    data, _ = encode_values(np.arange(64, dtype=np.float32), spec)
    other, _ = encode_values(np.arange(32, dtype=np.float32), spec)
    with pytest.raises(CodecError, match="declares 256 bytes"):
        decode_values(data, spec, 32, 1.0)
    with pytest.raises(CodecError, match="bad zstd frame"):
        decode_values(data + other, spec, 64, 1.0)  # a second frame
    with pytest.raises(CodecError, match="bad zstd frame"):
        decode_values(data[:-2], spec, 64, 1.0)  # truncated
    with pytest.raises(CodecError, match="not a zstd frame"):
        decode_values(b"\x00" * 40, spec, 64, 1.0)
    with pytest.raises(CodecError):
        decode_values(b"", spec, 0, 1.0)


def test_zstd_without_content_size_is_bounded_too() -> None:
    spec = CodecSpec("fp32", zstd=True)
    raw = shuffle(np.arange(64, dtype=np.float32).tobytes(), 4)
    cobj = zstandard.ZstdCompressor(level=3).compressobj()  # streaming: no content size
    frame = cobj.compress(raw) + cobj.flush()
    assert zstandard.frame_content_size(frame) in (-1, zstandard.CONTENTSIZE_UNKNOWN)
    np.testing.assert_array_equal(
        decode_values(frame, spec, 64, 1.0), np.arange(64, dtype=np.float32)
    )
    with pytest.raises(CodecError, match=r"produced|bad zstd"):
        decode_values(frame, spec, 65, 1.0)
    with pytest.raises(CodecError, match="bad zstd"):
        decode_values(frame, spec, 63, 1.0)


GIB = 1 << 30


@pytest.fixture(scope="module")
def zstd_bombs() -> dict[str, bytes]:
    """1 GiB of zeros as a ~32 KB zstd frame: with and without the content size declared."""
    zeros = bytes(1 << 20)
    out = {}
    for name, size in (("declared", GIB), ("streamed", -1)):
        cobj = zstandard.ZstdCompressor(level=3).compressobj(size=size)
        out[name] = b"".join(cobj.compress(zeros) for _ in range(GIB // len(zeros))) + cobj.flush()
    assert zstandard.frame_content_size(out["declared"]) == GIB
    return out


@pytest.mark.parametrize("kind", ["declared", "streamed"])
def test_zstd_bomb_is_rejected_without_allocating(zstd_bombs: dict[str, bytes], kind: str) -> None:
    bomb = zstd_bombs[kind]
    assert len(bomb) < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decode_values(bomb, CodecSpec("fp32", zstd=True), 1024, 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # the 1 GiB (or even 4 MiB) never materialises
