"""Dense value encodings: precision of each stage, exact byte layouts, stochastic rounding,
bounded zstd decompression. Top-k has its own file (test_codec_topk.py)."""

import re
import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmq.codec import CodecSpec, decode_values, encode_values
from fedmq.codec.tensors import SIGN_ZERO_SCALE, shuffle, unshuffle
from fedmq.errors import CodecError, LimitExceeded

pytestmark = pytest.mark.unit

FOUNDATION = ["fp32", "fp32+zstd", "fp16", "fp16+zstd", "bf16", "bf16+zstd", "int8", "int8+zstd"]
NEW = [f"{d}{z}" for d in ("int8:sr", "int4", "int4:sr", "sign") for z in ("", "+zstd")]
ALL = FOUNDATION + NEW
SPARSE = ["topk:0.1+fp32", "topk:0.1+int8:sr+zstd", "topk:0.5+int4", "topk:0.01+sign+zstd"]

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
vectors = hnp.arrays(np.float32, st.integers(0, 300), elements=finite_f32)
small_vectors = hnp.arrays(
    np.float32, st.integers(0, 300), elements=st.floats(-60000, 60000, width=32)
)


BF16_SAFE = float(np.float32(3e38))  # rounds to a finite bf16


def round_trip(
    values: np.ndarray, text: str, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, float]:
    spec = CodecSpec.parse(text)
    data, scale = encode_values(values, spec, rng=rng)
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


@pytest.mark.parametrize("text", ALL + SPARSE)
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
    # the last value is negative and largest: int4/sign padding of a 127-long reading is not 0
    data, scale = encode_values(np.arange(128, dtype=np.float32) * -1, spec)
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
    for text in ("int4", "sign", "int8:sr"):
        data, _ = encode_values(np.ones(4, np.float32), CodecSpec.parse(text))
        for scale in (0.0, -1.0, float("nan"), float("inf"), True):
            with pytest.raises(CodecError, match="scale"):
                decode_values(data, CodecSpec.parse(text), 4, scale)


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
@pytest.mark.parametrize("text", ["fp32+zstd", "int4+zstd", "sign+zstd", "topk:0.01+int8+zstd"])
def test_zstd_bomb_is_rejected_without_allocating(
    zstd_bombs: dict[str, bytes], kind: str, text: str
) -> None:
    bomb = zstd_bombs[kind]
    assert len(bomb) < 64 * 1024
    spec = CodecSpec.parse(text)
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decode_values(bomb, spec, 1024, 1.0 if not spec.scaled else 0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # the 1 GiB (or even 4 MiB) never materialises


# ---- int4, sign and stochastic rounding -------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(vectors, st.sampled_from(["int4", "int4+zstd"]))
def test_int4_error_is_at_most_half_a_step(values: np.ndarray, text: str) -> None:
    out, scale = round_trip(values, text)
    absmax = float(np.max(np.abs(values))) if values.size else 0.0
    assert scale == (absmax / 7 if absmax > 0 else 1.0)
    err = np.abs(out.astype(np.float64) - values.astype(np.float64))
    assert np.all(err <= scale * (0.5 + 2.0**-20))
    assert len(encode_values(values, CodecSpec("int4"))[0]) == (values.size + 1) // 2


@settings(max_examples=80, deadline=None)
@given(vectors, st.sampled_from(["int8:sr", "int4:sr+zstd"]), st.integers(0, 2**32 - 1))
def test_stochastic_rounding_error_is_under_one_step(
    values: np.ndarray, text: str, seed: int
) -> None:
    out, scale = round_trip(values, text, np.random.default_rng(seed))
    err = np.abs(out.astype(np.float64) - values.astype(np.float64))
    assert np.all(err <= scale * (1.0 + 2.0**-20))


@settings(max_examples=80, deadline=None)
@given(vectors, st.sampled_from(["sign", "sign+zstd"]))
def test_sign_is_one_bit_and_the_mean_magnitude(values: np.ndarray, text: str) -> None:
    out, scale = round_trip(values, text)
    mean = float(np.mean(np.abs(values), dtype=np.float64)) if values.size else 0.0
    assert scale == (mean if mean > 0 else SIGN_ZERO_SCALE)
    magnitude = np.float32(scale)
    np.testing.assert_array_equal(out, np.where(values < 0, -magnitude, magnitude))
    assert len(encode_values(values, CodecSpec("sign"))[0]) == (values.size + 7) // 8


def test_int4_and_sign_byte_layouts_are_as_documented() -> None:
    data, scale = encode_values(np.array([1.0, -1.0, 0.5], np.float32), CodecSpec("int4"))
    assert scale == 1.0 / 7
    assert data == bytes([0x97, 0x04])  # 7 | (-7 & 15) << 4, then rint(3.5) = 4 and a 0 nibble
    x = np.array([1.0, -2.0, 0.0, -0.0, 3.0, 0.0, 0.0, 0.0, -1.0], np.float32)
    data, scale = encode_values(x, CodecSpec("sign"))
    assert data == bytes([0b0000_0010, 0b0000_0001])  # LSB first; -0.0 counts as positive
    assert scale == 7.0 / 9
    out = decode_values(data, CodecSpec("sign"), 9, scale)
    np.testing.assert_array_equal(out, np.float32(7 / 9) * np.where(x < 0, -1, 1))


def test_sign_of_an_all_zero_chunk_decodes_to_zeros() -> None:
    zeros = np.zeros(100, np.float32)
    out, scale = round_trip(zeros, "sign")
    assert scale == SIGN_ZERO_SCALE > 0.0
    assert out.tobytes() == zeros.tobytes()  # +0.0 everywhere


@pytest.mark.parametrize("text", ["int4", "int4+zstd", "sign", "sign+zstd"])
@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65])
def test_sub_byte_packings_round_trip_odd_lengths(text: str, size: int) -> None:
    values = np.random.default_rng(size).normal(0, 1, size).astype(np.float32)
    out, scale = round_trip(values, text)
    assert out.shape == (size,)
    if text.startswith("sign"):
        assert np.array_equal(np.sign(out), np.where(values < 0, -1, 1))
    else:
        assert np.all(np.abs(out - values) <= scale * 0.5001)


def test_sub_byte_padding_must_be_zero() -> None:
    int4 = CodecSpec("int4")
    data, scale = encode_values(np.array([1.0, -1.0, 0.5], np.float32), int4)
    with pytest.raises(CodecError, match="padding nibble"):
        decode_values(data[:1] + bytes([0x14]), int4, 3, scale)
    assert decode_values(bytes([0x88]), int4, 2, 1.0).tolist() == [-8.0, -8.0]  # -8 accepted
    sign = CodecSpec("sign")
    with pytest.raises(CodecError, match="padding bits"):
        decode_values(bytes([0b1000_0000]), sign, 7, 1.0)
    assert decode_values(bytes([0b1000_0000]), sign, 8, 1.0)[7] == -1.0


@pytest.mark.parametrize(("text", "levels"), [("int8:sr", 127), ("int4:sr", 7)])
def test_stochastic_rounding_is_unbiased_where_nearest_is_not(text: str, levels: int) -> None:
    # every value sits 0.3 of a step above a grid point: nearest always rounds down
    x = np.array([1.0, *((np.arange(-levels + 1, levels) + 0.3) / levels)], np.float32)
    draws = 4000
    rng = np.random.default_rng(7)
    total = np.zeros(x.size, np.float64)
    for _ in range(draws):
        total += round_trip(x, text, rng)[0]
    step = 1.0 / levels
    bias = total / draws - x
    # std of one draw <= step / 2, so the mean of 4000 is within ~4 sigma = step * 0.032
    assert np.all(np.abs(bias) < 0.035 * step)
    nearest, _ = round_trip(x, text.replace(":sr", ""))
    assert np.abs(nearest[1:] - x[1:]).min() > 0.29 * step  # biased by 0.3 of a step


@pytest.mark.parametrize("text", ["int8:sr+zstd", "int4:sr", "topk:0.1+int8:sr"])
def test_stochastic_rounding_is_reproducible_with_a_seed(text: str) -> None:
    spec = CodecSpec.parse(text)
    x = np.random.default_rng(0).normal(0, 1, 1000).astype(np.float32)
    a = encode_values(x, spec, rng=np.random.default_rng(42))
    b = encode_values(x, spec, rng=np.random.default_rng(42))
    c = encode_values(x, spec, rng=np.random.default_rng(43))
    assert a == b and a != c
    assert encode_values(x, spec) == encode_values(x, spec, rng=np.random.default_rng(0))
    nearest = CodecSpec.parse(text.replace(":sr", ""))
    assert encode_values(x, nearest, rng=np.random.default_rng(1)) == encode_values(x, nearest)


def test_int8_bytes_stay_the_foundations() -> None:
    """int8 without ':sr' is the foundation's deterministic codec, byte for byte."""
    x = np.random.default_rng(3).normal(0, 1, 999).astype(np.float32)
    data, scale = encode_values(x, CodecSpec("int8"), rng=np.random.default_rng(9))
    want = np.clip(np.rint(x.astype(np.float64) / (np.abs(x).max() / 127)), -127, 127)
    assert data == want.astype(np.int8).tobytes()
    assert scale == float(np.abs(x).max()) / 127


def test_shuffle_zstd_reaches_115x_on_one_128k_chunk_of_deltas() -> None:
    """A block per byte plane: 32,768 values is one fp32 chunk at the default 128 KiB payload."""
    delta = np.random.default_rng(0).normal(0, 1e-3, 32_768).astype(np.float32)
    spec = CodecSpec("fp32", zstd=True)
    packed, _ = encode_values(delta, spec)
    assert delta.nbytes / len(packed) >= 1.15
    assert zstandard.frame_content_size(packed) == delta.nbytes
    assert decode_values(packed, spec, delta.size, 1.0).tobytes() == delta.tobytes()


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(NEW + SPARSE), st.binary(max_size=300), st.integers(0, 700))
def test_random_data_raises_only_codec_errors(text: str, data: bytes, length: int) -> None:
    spec = CodecSpec.parse(text)
    try:
        out = decode_values(data, spec, length, 0.5 if spec.scaled else 1.0)
    except CodecError:
        return
    assert out.dtype == np.float32 and out.shape == (length,)
