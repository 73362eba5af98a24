"""Codec spec grammar: [topk:FRACTION+] VALUE[:sr] [+zstd], in kind order, one value stage."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.codec import CodecSpec, codec_names
from fedmq.codec.spec import STAGES
from fedmq.errors import CodecError

pytestmark = pytest.mark.unit

DENSE = ["fp32", "fp16", "bf16", "int8", "int8:sr", "int4", "int4:sr", "sign"]
CANONICAL = [
    *DENSE,
    *(f"{d}+zstd" for d in DENSE),
    *(f"topk:{f}+{d}" for f in ("0.01", "0.1", "1.0", "1e-05") for d in DENSE),
    *(f"topk:0.01+{d}+zstd" for d in DENSE),
]


@pytest.mark.parametrize("text", CANONICAL)
def test_parse_str_round_trip(text: str) -> None:
    spec = CodecSpec.parse(text)
    assert str(spec) == text
    assert CodecSpec.parse(str(spec)) == spec
    assert spec.zstd == text.endswith("+zstd")
    assert spec.stochastic == (":sr" in text)
    assert (spec.topk is not None) == text.startswith("topk:")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("topk:.5+int8", "topk:0.5+int8"), ("topk:1+fp32", "topk:1.0+fp32"),
     ("topk:1e-2+int8+zstd", "topk:0.01+int8+zstd"), ("topk:0.010+sign", "topk:0.01+sign"),
     ("topk:5E-1+int4:sr", "topk:0.5+int4:sr")],
)  # fmt: skip
def test_other_spellings_parse_to_the_canonical_text(text: str, canonical: str) -> None:
    assert str(CodecSpec.parse(text)) == canonical


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0, exclude_min=True))
def test_every_fraction_round_trips(fraction: float) -> None:
    spec = CodecSpec("int8", topk=fraction, zstd=True)
    assert CodecSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "bits"),
    [("fp32", 32), ("fp16+zstd", 16), ("bf16", 16), ("int8+zstd", 8), ("int4:sr", 4),
     ("sign", 1), ("topk:0.1+int4+zstd", 4)],
)  # fmt: skip
def test_bits_per_value_and_sizes(text: str, bits: int) -> None:
    spec = CodecSpec.parse(text)
    assert spec.bits_per_value == bits
    for n in (0, 1, 7, 8, 9):
        assert spec.value_bytes(n) == -(-n * bits // 8)
    assert spec.shuffle_width == max(1, bits // 8)


@pytest.mark.parametrize(
    ("text", "lossy"),
    [("fp32", False), ("fp32+zstd", False), ("topk:1.0+fp32+zstd", True), ("fp16", True),
     ("bf16+zstd", True), ("int8", True), ("int4:sr", True), ("sign", True),
     ("topk:0.5+fp32", True)],
)  # fmt: skip
def test_lossy_says_when_to_use_error_feedback(text: str, lossy: bool) -> None:
    assert CodecSpec.parse(text).lossy is lossy


@pytest.mark.parametrize(
    ("fraction", "n", "keep"),
    [("0.1", 30, 3), ("0.01", 100, 1), ("0.01", 101, 2), ("0.01", 1, 1), ("1.0", 7, 7),
     ("0.3", 10, 3), ("0.7", 10, 7), ("1e-05", 1 << 20, 11), ("0.5", 0, 0)],
)  # fmt: skip
def test_keep_is_the_exact_ceiling(fraction: str, n: int, keep: int) -> None:
    # 0.1 * 30 is 3.0000000000000004 in floats: the decimal text decides, not float rounding
    assert CodecSpec.parse(f"topk:{fraction}+int8").keep(n) == keep
    assert CodecSpec.parse("int8").keep(n) == n


VALID = "[topk:FRACTION+] (fp32 | fp16 | bf16 | int8[:sr] | int4[:sr] | sign) [+zstd]"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("fp64", "unknown codec stage 'fp64'"),
        ("zstd", "no value stage"),
        ("topk:0.1", "no value stage"),
        ("topk:0.1+zstd", "no value stage"),
        ("zstd+fp32", "'fp32' must come before 'zstd'"),
        ("int8+topk:0.1", "'topk' must come before 'int8'"),
        ("fp32+zstd+topk:0.1", "'topk' must come before 'fp32'"),
        ("fp32+fp16", "'fp32' and 'fp16' .* both value stages"),
        ("topk:0.1+int8+int4", "both value stages"),
        ("fp32+zstd+zstd", "both entropy stages"),
        ("topk:0.1+topk:0.2+fp32", "both sparsify stages"),
        ("fp32:3", "takes no argument"),
        ("sign:sr", "takes no argument"),
        ("zstd:19", "takes no argument"),
        ("int8:", "needs a non-empty argument"),
        ("int8:rn", "the only argument is int8:sr"),
        ("int4:SR", "the only argument is int4:sr"),
        ("topk+int8", "needs an argument"),
        ("topk:+int8", "needs a non-empty argument"),
        ("topk:0+int8", r"outside \(0, 1\]"),
        ("topk:0.0+int8", r"outside \(0, 1\]"),
        ("topk:1.5+int8", r"outside \(0, 1\]"),
        ("topk:1e-400+int8", r"outside \(0, 1\]"),  # underflows to 0
        ("topk:-0.1+int8", "not a decimal"),
        ("topk:nan+int8", "not a decimal"),
        ("topk:inf+int8", "not a decimal"),
        ("topk: 0.1+int8", "not a decimal"),
        ("topk:1_0+int8", "not a decimal"),
        ("topk:0x1+int8", "not a decimal"),
        ("fp32+", "unknown codec stage ''"),
        ("FP32", "unknown"),
        (" fp32", "unknown"),
        ("top-k:0.1+fp32", "unknown"),
    ],
)
def test_parse_rejects_with_the_valid_forms(text: str, needle: str) -> None:
    with pytest.raises(CodecError, match=needle) as info:
        CodecSpec.parse(text)
    message = str(info.value)
    if "unknown" in needle or "both" in needle or "before" in needle or "no value" in needle:
        assert VALID in message


def test_parse_rejects_non_text() -> None:
    with pytest.raises(CodecError):
        CodecSpec.parse(3)  # type: ignore[arg-type]


def test_direct_construction_is_validated() -> None:
    assert str(CodecSpec("bf16", zstd=True)) == "bf16+zstd"
    assert str(CodecSpec("int4", topk=1, stochastic=True)) == "topk:1.0+int4:sr"
    with pytest.raises(CodecError, match="dtype"):
        CodecSpec("zstd")
    with pytest.raises(CodecError, match="zstd"):
        CodecSpec("fp32", zstd=1)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="stochastic rounding applies to int8 and int4"):
        CodecSpec("fp16", stochastic=True)
    for bad in (0.0, -0.5, 1.5, float("nan"), True, "0.1"):
        with pytest.raises(CodecError, match="topk"):
            CodecSpec("int8", topk=bad)  # type: ignore[arg-type]


def test_dense_and_raw_variants() -> None:
    spec = CodecSpec.parse("topk:0.01+int8:sr+zstd")
    assert str(spec.dense) == "int8:sr+zstd"
    assert str(spec.raw) == "topk:0.01+int8:sr"
    assert spec.scaled and CodecSpec.parse("sign").scaled and not CodecSpec("bf16").scaled


def test_codec_names_lists_every_family_and_each_parses() -> None:
    names = codec_names()
    specs = [CodecSpec.parse(name) for name, _ in names]
    assert [str(s) for s in specs] == [n for n, _ in names]
    for _, description in names:
        assert description and "\n" not in description
    used = {s.dtype for s in specs} | {"zstd" for s in specs if s.zstd}
    used |= {"topk" for s in specs if s.topk is not None}
    assert used == set(STAGES)
    assert any(s.stochastic and s.dtype == "int8" for s in specs)
    assert any(s.stochastic and s.dtype == "int4" for s in specs)
    assert "topk:0.01+int8+zstd" in dict(names)
