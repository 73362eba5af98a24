"""Codec spec grammar: NAME[:ARG] stages joined by '+', in kind order."""

import pytest

from fedmq.codec import CodecSpec, codec_names
from fedmq.errors import CodecError

pytestmark = pytest.mark.unit

CANONICAL = [
    "fp32",
    "fp32+zstd",
    "fp16",
    "fp16+zstd",
    "bf16",
    "bf16+zstd",
    "int8",
    "int8+zstd",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_parse_str_round_trip(text: str) -> None:
    spec = CodecSpec.parse(text)
    assert str(spec) == text
    assert CodecSpec.parse(str(spec)) == spec
    assert spec.zstd == text.endswith("+zstd")


@pytest.mark.parametrize(
    ("text", "bpv"), [("fp32", 4), ("fp16+zstd", 2), ("bf16", 2), ("int8+zstd", 1)]
)
def test_bytes_per_value(text: str, bpv: int) -> None:
    assert CodecSpec.parse(text).bytes_per_value == bpv


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "valid stages"),
        ("fp64", "unknown codec stage 'fp64'"),
        ("zstd", "no value stage"),
        ("zstd+fp32", "out of order"),
        ("fp32+fp16", "out of order or repeated"),
        ("fp32+zstd+zstd", "out of order or repeated"),
        ("fp32:3", "takes no argument"),
        ("fp32+", "unknown codec stage ''"),
        ("FP32", "unknown"),
        (" fp32", "unknown"),
        ("topk:0.01+fp32", "unknown codec stage 'topk'"),
    ],
)
def test_parse_rejects_with_valid_stage_list(text: str, needle: str) -> None:
    with pytest.raises(CodecError, match=needle) as info:
        CodecSpec.parse(text)
    if "unknown" in needle or "valid" in needle:
        assert "fp32, fp16, bf16, int8, zstd" in str(info.value)


def test_parse_rejects_non_text() -> None:
    with pytest.raises(CodecError):
        CodecSpec.parse(3)  # type: ignore[arg-type]


def test_direct_construction_is_validated() -> None:
    assert str(CodecSpec("bf16", zstd=True)) == "bf16+zstd"
    with pytest.raises(CodecError, match="dtype"):
        CodecSpec("zstd")
    with pytest.raises(CodecError, match="zstd"):
        CodecSpec("fp32", zstd=1)  # type: ignore[arg-type]


def test_codec_names_lists_every_codec_and_each_parses() -> None:
    names = codec_names()
    assert [n for n, _ in names] == CANONICAL
    for name, description in names:
        assert str(CodecSpec.parse(name)) == name
        assert description and "\n" not in description
