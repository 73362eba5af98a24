"""Top-k sparsification: which values are kept, how indices are written, and hostile chunks."""

import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmq.codec import CodecSpec, decode_values, encode_chunk, encode_values
from fedmq.codec.tensors import BITMAP, GAPS, select_topk, shuffle, write_varint
from fedmq.errors import CodecError

pytestmark = pytest.mark.unit

VALUE_STAGES = ["fp32", "fp16", "bf16", "int8", "int8:sr", "int4", "int4:sr", "sign"]
F32_1 = np.float32(1.0).tobytes()


def sparse(values: np.ndarray, text: str) -> tuple[np.ndarray, bytes, float]:
    spec = CodecSpec.parse(text)
    data, scale = encode_values(values, spec)
    out = decode_values(data, spec, values.size, scale)
    assert out.dtype == np.float32 and out.shape == values.shape
    return out, data, scale


def kept(values: np.ndarray, text: str) -> np.ndarray:
    """Indices the codec sent, read back through fp32 (exact) with the same fraction."""
    fraction = CodecSpec.parse(text).topk
    out, _, _ = sparse(values, f"topk:{fraction!r}+fp32")
    return np.flatnonzero(out)


@settings(max_examples=120, deadline=None)
@given(
    values=hnp.arrays(np.float32, st.integers(0, 400), elements=st.floats(-1e4, 1e4, width=32)),
    fraction=st.sampled_from(["0.001", "0.01", "0.1", "0.37", "0.5", "1.0"]),
    stage=st.sampled_from(VALUE_STAGES),
    zstd=st.booleans(),
)
def test_round_trip_keeps_the_largest_and_zeros_the_rest(
    values: np.ndarray, fraction: str, stage: str, zstd: bool
) -> None:
    text = f"topk:{fraction}+{stage}" + ("+zstd" if zstd else "")
    spec = CodecSpec.parse(text)
    out, _, scale = sparse(values, text)
    idx = kept(values, text)
    mag = np.abs(values)
    assert idx.size == min(spec.keep(values.size), int(np.count_nonzero(mag)))
    rest = np.setdiff1d(np.arange(values.size), idx)
    if idx.size and rest.size:
        assert mag[idx].min() >= mag[rest].max()  # the largest are kept
    assert not np.any(out[rest])  # zeros where nothing was sent
    if idx.size == 0:
        return
    if stage.endswith(":sr"):
        assert np.all(np.abs(out[idx] - values[idx]) <= scale * 1.0001)
    else:  # exactly the value stage applied to the kept values
        dense = CodecSpec.parse(stage)
        data, dense_scale = encode_values(values[idx], dense)
        assert dense_scale == scale
        np.testing.assert_array_equal(out[idx], decode_values(data, dense, idx.size, scale))


def test_ties_at_the_threshold_go_to_the_lower_indices() -> None:
    values = np.array([1, -1, 1, 2, -1, 1, 1, 1, 1, 1], np.float32)
    assert select_topk(values, 3).tolist() == [0, 1, 3]
    assert kept(values, "topk:0.3+int8").tolist() == [0, 1, 3]
    assert select_topk(np.ones(100, np.float32), 7).tolist() == list(range(7))


def test_zeros_are_never_sent() -> None:
    values = np.zeros(1000, np.float32)
    values[[5, 700]] = [2.0, -0.0]
    out, data, _ = sparse(values, "topk:0.1+fp32")  # keep up to 100, only one is non-zero
    assert np.flatnonzero(out).tolist() == [5]
    assert data[:2] == bytes([GAPS, 1])
    out, data, scale = sparse(np.zeros(64, np.float32), "topk:0.5+int8")
    assert data == bytes([GAPS, 0]) and scale == 1.0 and not out.any()
    assert sparse(np.zeros(0, np.float32), "topk:0.5+sign+zstd")[0].shape == (0,)


def test_k_of_one_and_k_of_all() -> None:
    values = (np.arange(1, 101) * np.where(np.arange(100) % 2, -1, 1)).astype(np.float32)
    out, data, _ = sparse(values, "topk:0.01+fp32")
    assert np.flatnonzero(out).tolist() == [99] and out[99] == -100.0
    assert data == bytes([GAPS, 1, 99]) + np.float32(-100).tobytes()
    out, data, _ = sparse(values, "topk:1.0+fp32")
    assert out.tobytes() == values.tobytes()  # every value, exactly
    assert data[0] == BITMAP and data[2:15] == b"\xff" * 12 + b"\x0f"


def test_the_documented_example() -> None:
    x = np.array([0, 3, 0, 0, 0, -4, 0, 0, 1, 0], np.float32)
    _, data, scale = sparse(x, "topk:0.2+fp32")
    assert data.hex(" ") == "00 02 01 03 00 00 40 40 00 00 80 c0"
    assert scale == 1.0
    _, data, scale = sparse(x, "topk:0.2+int8")
    assert data.hex(" ") == "00 02 01 03 5f 81" and scale == 4 / 127  # rint(95.25) = 95
    frame, _ = encode_values(x, CodecSpec.parse("topk:0.2+fp16+zstd"))
    half = np.array([3, -4], "<f2").tobytes()
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes([0, 2, 1, 3]) + shuffle(half, 2)


def test_multi_byte_gap_varints() -> None:
    x = np.zeros(1000, np.float32)
    x[[0, 300, 999]] = [1.0, 2.0, 3.0]
    _, data, _ = sparse(x, "topk:0.003+fp32")
    assert data[:7] == bytes([GAPS, 3, 0x00, 0xAB, 0x02, 0xBA, 0x05])  # gaps 0, 299, 698
    assert write_varint(0) == b"\x00" and write_varint(127) == b"\x7f"
    assert write_varint(128) == b"\x80\x01" and write_varint(2**21) == b"\x80\x80\x80\x01"


@pytest.mark.parametrize(
    ("n", "keep", "form"),
    [
        (64, 8, GAPS),  # 8 one-byte gaps = 8 bytes = the bitmap: a tie goes to gaps
        (64, 9, BITMAP),
        (1024, 128, GAPS),  # gaps of 7 fit one byte each
        (1024, 129, BITMAP),
        (8, 1, GAPS),
    ],
)
def test_bitmap_when_strictly_shorter_than_gaps(n: int, keep: int, form: int) -> None:
    x = np.zeros(n, np.float32)
    x[np.linspace(0, n - 1, keep).astype(int)] = 1.0
    spec = CodecSpec("fp32", topk=keep / n)
    data, _ = encode_values(x, spec)
    assert data[0] == form
    np.testing.assert_array_equal(decode_values(data, spec, n, 1.0), x)


@pytest.mark.parametrize("stage", ["int4", "sign", "int8", "bf16"])
@pytest.mark.parametrize("k", [1, 2, 3, 7, 8, 9, 17])
def test_odd_counts_of_packed_values(stage: str, k: int) -> None:
    x = np.zeros(640, np.float32)
    x[np.arange(k) * 37] = np.linspace(1, 2, k) * np.where(np.arange(k) % 2, -1, 1)
    out, _, _ = sparse(x, f"topk:{k / 640!r}+{stage}")
    assert np.flatnonzero(out).tolist() == (np.arange(k) * 37).tolist()
    assert np.array_equal(np.sign(out), np.sign(x))


def test_sparse_falls_back_to_dense_only_when_not_smaller() -> None:
    x = np.random.default_rng(0).normal(0, 1, 4096).astype(np.float32)
    for text, used in [
        ("topk:0.01+int8", "topk:0.01+int8"),
        ("topk:0.9+int8", "int8"),  # 90% kept: indices cost more than they save
        ("topk:0.9+fp32", "topk:0.9+fp32"),
        ("topk:1.0+fp32", "fp32"),
        ("topk:0.6+sign", "sign"),
    ]:
        data, scale, spec = encode_chunk(x, CodecSpec.parse(text))
        assert str(spec) == used
        assert len(data) <= CodecSpec.parse(text).dense.raw.value_bytes(x.size)
        decode_values(data, spec, x.size, scale)


def test_top1_percent_int8_costs_under_2_percent_of_fp32() -> None:
    x = np.random.default_rng(1).normal(0, 1e-3, 500_000).astype(np.float32)
    data, _, spec = encode_chunk(x, CodecSpec.parse("topk:0.01+int8+zstd"))
    assert str(spec) == "topk:0.01+int8+zstd"
    assert len(data) < 0.02 * x.nbytes  # indices included: ~1.1 B index + 1 B value per kept


# ---- hostile chunks -------------------------------------------------------------------------

FP32 = CodecSpec.parse("topk:0.1+fp32")


def raw_chunk(form: int, k: bytes, index: bytes, values: bytes) -> bytes:
    return bytes([form]) + k + index + values


@pytest.mark.parametrize(
    ("data", "n", "needle"),
    [
        (b"", 8, "empty"),
        (b"\x02\x00", 8, "unknown index form 2"),
        (b"\x00", 8, "k varint is truncated"),
        (b"\x00\x80", 8, "k varint is truncated"),
        (b"\x00\x81\x00", 8, "k varint is not minimal"),
        (b"\x00" + b"\xff" * 9 + b"\x01", 8, "longer than 9 bytes"),
        (raw_chunk(GAPS, b"\x09", b"", b""), 8, "declares 9 values, chunk length is 8"),
        (raw_chunk(GAPS, b"\x02", b"\x81" * 8, F32_1 * 2), 64, "2 index varints do not fit"),
        (raw_chunk(GAPS, b"\x01", b"\x08", F32_1), 8, "out of range"),  # index 8 of 8
        (raw_chunk(GAPS, b"\x02", b"\x03\x0c", F32_1 * 2), 16, "index 16 is out of range"),
        (raw_chunk(GAPS, b"\x01", b"\x80\x00", F32_1), 200, "not minimal"),
        (raw_chunk(GAPS, b"\x01", b"\x80\x80\x01", F32_1), 200, "too long for length 200"),
        (raw_chunk(GAPS, b"\x01", b"\x00", F32_1 + b"\x00"), 8, "5 value bytes"),
        (raw_chunk(GAPS, b"\x02", b"\x00\x00", F32_1), 16, "4 value bytes, 2 x fp32 needs 8"),
        (raw_chunk(BITMAP, b"\x01", b"", b""), 16, "bitmap is truncated"),
        (raw_chunk(BITMAP, b"\x01", b"\x80", F32_1), 7, r"bitmap marks an index >= length 7"),
        (raw_chunk(BITMAP, b"\x01", b"\x03", F32_1), 8, "marks 2 indices, header says 1"),
        (raw_chunk(BITMAP, b"\x02", b"\x01\x00", F32_1 * 2), 16, "marks 1 indices"),
        (raw_chunk(BITMAP, b"\x00", b"\x00", b"\x00"), 8, "1 value bytes"),
        (b"\x00\x00" + b"\x00" * 100, 8, "data is 102 bytes, length 8 allows"),
    ],
)
def test_lying_top_k_chunks_are_codec_errors(data: bytes, n: int, needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        decode_values(data, FP32, n, 1.0)


def test_a_gaps_section_longer_than_the_bitmap_is_refused() -> None:
    # 9 one-byte gaps for n = 64 take 9 bytes > the 8-byte bitmap: not a form encoders write
    data = raw_chunk(GAPS, b"\x09", b"\x00" * 9, F32_1 * 9)
    with pytest.raises(CodecError, match="do not fit in 8 bytes"):
        decode_values(data, FP32, 64, 1.0)
    ok = raw_chunk(GAPS, b"\x08", b"\x00" * 8, F32_1 * 8)
    assert decode_values(ok, FP32, 64, 1.0).tolist() == [1.0] * 8 + [0.0] * 56


@settings(max_examples=300, deadline=None)
@given(k=st.integers(0, 40), n=st.integers(1, 2000), gaps=st.binary(max_size=80))
def test_no_index_list_is_unsorted_or_duplicated(k: int, n: int, gaps: bytes) -> None:
    """Gaps are coded minus one, so any bytes give strictly increasing indices, or an error."""
    data = raw_chunk(GAPS, write_varint(k), gaps, F32_1 * k)
    try:
        out = decode_values(data, FP32, n, 1.0)
    except CodecError:
        return
    assert np.count_nonzero(out) == k  # k distinct in-range positions hold the k ones


@pytest.mark.parametrize("text", [f"topk:0.1+{s}" for s in VALUE_STAGES] + ["topk:0.5+int4+zstd"])
def test_every_truncation_and_extension_is_refused(text: str) -> None:
    spec = CodecSpec.parse(text)
    x = np.random.default_rng(0).normal(0, 1, 333).astype(np.float32)
    data, scale = encode_values(x, spec)
    decode_values(data, spec, x.size, scale)
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            decode_values(data[:cut], spec, x.size, scale)
    with pytest.raises(CodecError):
        decode_values(data + b"\x00", spec, x.size, scale)


def test_scale_rules_hold_for_sparse_chunks() -> None:
    data, _ = encode_values(np.ones(10, np.float32), FP32)
    with pytest.raises(CodecError, match=r"scale must be 1\.0"):
        decode_values(data, FP32, 10, 2.0)
    int8 = CodecSpec.parse("topk:0.1+int8")
    data, _ = encode_values(np.ones(10, np.float32), int8)
    with pytest.raises(CodecError, match="scale must be > 0"):
        decode_values(data, int8, 10, 0.0)


def test_zstd_frame_declaring_more_than_a_sparse_chunk_can_hold() -> None:
    spec = CodecSpec.parse("topk:0.01+fp32+zstd")
    n = 1000
    bound = 1 + 2 + 125 + 4000  # form, varint(1000), bitmap, n fp32 values
    ok = zstandard.ZstdCompressor().compress(bytes([GAPS, 0]) + b"\x00" * (bound - 2))
    with pytest.raises(CodecError, match="value bytes"):  # fits the bound, then fails to parse
        decode_values(ok, spec, n, 1.0)
    big = zstandard.ZstdCompressor().compress(b"\x00" * (bound + 1))
    with pytest.raises(CodecError, match=f"declares {bound + 1} bytes, chunk needs at most"):
        decode_values(big, spec, n, 1.0)
    cobj = zstandard.ZstdCompressor().compressobj()  # no content size: bounded while inflating
    streamed = cobj.compress(b"\x00" * (bound + 1)) + cobj.flush()
    with pytest.raises(CodecError, match="bad zstd frame"):
        decode_values(streamed, spec, n, 1.0)


def test_hostile_sparse_chunks_stay_within_bounded_memory() -> None:
    """A chunk claiming the most the limits allow allocates about its dense output, no more."""
    n = 1 << 20
    spec = CodecSpec.parse("topk:0.5+fp32")
    lies = [
        raw_chunk(GAPS, write_varint(n), b"\x00" * 1000, b""),  # k = n, few gaps
        raw_chunk(BITMAP, write_varint(n), b"\xff" * (n // 8), b""),  # all bits, no values
        raw_chunk(GAPS, write_varint(n + 1), b"", b""),
    ]
    tracemalloc.start()
    try:
        for data in lies:
            with pytest.raises(CodecError):
                decode_values(data, spec, n, 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * n  # bitmap unpacking + indices; the 4n-byte output is never reached
