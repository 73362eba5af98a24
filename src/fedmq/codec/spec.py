"""Codec spec grammar: stages NAME[:ARG] joined by "+", e.g. "topk:0.01+int8+zstd".

Every stage has a kind; kinds appear in the fixed order of `KINDS`, each at most once, and
exactly one "value" stage is required:

    [topk:FRACTION +] fp32 | fp16 | bf16 | int8[:sr] | int4[:sr] | sign [+ zstd]

A new stage is one `Stage` in `STAGES` plus a field of `CodecSpec` and a line in
`CodecSpec._from_stages`; the parser stays.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from fractions import Fraction

from fedmq.errors import CodecError

# Canonical order of stage kinds: which elements are kept, how each is stored, byte transforms.
KINDS: tuple[str, ...] = ("sparsify", "value", "entropy")

SR = "sr"  # the argument of int8 / int4 that asks for stochastic rounding
# A fraction as decimal text: digits with an optional point and exponent; no sign, no spaces,
# no "nan"/"inf", no underscores (Python's float() accepts all of those).
_DECIMAL = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    kind: str  # one of KINDS
    help: str  # what it does, in one line
    bits: int = 0  # value stages only: bits one stored value takes (int4: 4, sign: 1)
    arg: str = "none"  # "none" | "optional" (int8:sr) | "required" (topk:FRACTION)
    lossless: bool = False  # value stages only: decodes bit-exactly


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("topk", "sparsify", "keep the largest-|x| FRACTION of each chunk", arg="required"),
        Stage("fp32", "value", "float32, lossless", 32, lossless=True),
        Stage("fp16", "value", "IEEE half, round-to-nearest-even", 16),
        Stage("bf16", "value", "bfloat16 (top 16 bits of float32), round-to-nearest-even", 16),
        Stage("int8", "value", "symmetric absmax int8, one scale per chunk", 8, arg="optional"),
        Stage("int4", "value", "symmetric absmax int4, one scale per chunk", 4, arg="optional"),
        Stage("sign", "value", "1 bit per value (the sign) + one scale = mean |x| per chunk", 1),
        Stage("zstd", "entropy", "byte-shuffle then zstd level 3"),
    )
}
VALUE_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES.values() if s.kind == "value")
ROUNDED = ("int8", "int4")  # value stages that take ":sr"


def _valid() -> str:
    values = " | ".join(f"{v}[:{SR}]" if v in ROUNDED else v for v in VALUE_STAGES)
    return (
        f"[topk:FRACTION+] ({values}) [+zstd], with 0 < FRACTION <= 1, "
        "e.g. 'fp32+zstd', 'int8:sr+zstd', 'topk:0.01+int8+zstd'"
    )


def _fraction(text: str, arg: str) -> float:
    if not _DECIMAL.fullmatch(arg):
        raise CodecError(f"topk fraction {arg!r} in {text!r} is not a decimal number in (0, 1]")
    value = float(arg)
    if not 0.0 < value <= 1.0:
        raise CodecError(f"topk fraction {arg!r} in {text!r} is outside (0, 1]")
    return value


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A parsed codec spec; `str(spec)` is its canonical text and parses back to an equal spec."""

    dtype: str  # the value stage: fp32 | fp16 | bf16 | int8 | int4 | sign
    zstd: bool = False  # byte-shuffle + zstd level 3 over the stored bytes
    topk: float | None = None  # keep this fraction (0, 1] of each chunk's values; None: dense
    stochastic: bool = False  # int8 / int4 only: stochastic rounding (":sr") instead of nearest

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, str) or self.dtype not in VALUE_STAGES:
            raise CodecError(
                f"CodecSpec.dtype must be one of {', '.join(VALUE_STAGES)}, got {self.dtype!r}"
            )
        if not isinstance(self.zstd, bool):
            raise CodecError(f"CodecSpec.zstd must be a bool, got {self.zstd!r}")
        if not isinstance(self.stochastic, bool):
            raise CodecError(f"CodecSpec.stochastic must be a bool, got {self.stochastic!r}")
        if self.stochastic and self.dtype not in ROUNDED:
            raise CodecError(f"stochastic rounding applies to {' and '.join(ROUNDED)} only")
        if self.topk is not None:
            k = self.topk
            if isinstance(k, bool) or not isinstance(k, int | float) or not 0.0 < k <= 1.0:
                raise CodecError(f"CodecSpec.topk must be a fraction in (0, 1], got {k!r}")
            object.__setattr__(self, "topk", float(k))

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        """The spec `text` names; CodecError, naming the valid forms, if it names none."""
        if not isinstance(text, str):
            raise CodecError(f"non-text codec spec {text!r}; valid: {_valid()}")
        return _parse(text)  # specs are immutable: a chunk's encoding text is parsed once

    @classmethod
    def _parse(cls, text: str) -> CodecSpec:
        if not text:
            raise CodecError(f"empty codec spec; valid: {_valid()}")
        parsed: list[tuple[Stage, str | None]] = []
        for token in text.split("+"):
            name, sep, arg = token.partition(":")
            stage = STAGES.get(name)
            if stage is None:
                raise CodecError(
                    f"unknown codec stage {name!r} in {text!r}; stages: "
                    f"{', '.join(STAGES)}; valid: {_valid()}"
                )
            if sep and (stage.arg == "none" or not arg):
                need = "takes no argument" if stage.arg == "none" else "needs a non-empty argument"
                raise CodecError(f"codec stage {name!r} {need} in {text!r}; valid: {_valid()}")
            if not sep and stage.arg == "required":
                raise CodecError(f"codec stage {name!r} needs an argument in {text!r}: topk:0.01")
            for prev, _ in parsed:
                if prev.kind == stage.kind:
                    raise CodecError(
                        f"codec stages {prev.name!r} and {name!r} in {text!r} are both "
                        f"{stage.kind} stages, repeated; use one. Valid: {_valid()}"
                    )
                if KINDS.index(prev.kind) > KINDS.index(stage.kind):
                    raise CodecError(
                        f"codec stages out of order in {text!r}: {name!r} must come before "
                        f"{prev.name!r}. Valid: {_valid()}"
                    )
            parsed.append((stage, arg if sep else None))
        return cls._from_stages(text, parsed)

    @classmethod
    def _from_stages(cls, text: str, parsed: list[tuple[Stage, str | None]]) -> CodecSpec:
        by_kind = {stage.kind: (stage.name, arg) for stage, arg in parsed}
        if "value" not in by_kind:
            raise CodecError(f"codec spec {text!r} names no value stage; valid: {_valid()}")
        dtype, rounding = by_kind["value"]
        if rounding is not None and rounding != SR:
            raise CodecError(f"{dtype}:{rounding} in {text!r}: the only argument is {dtype}:{SR}")
        sparse = by_kind.get("sparsify")
        return cls(
            dtype=dtype,
            zstd="entropy" in by_kind,
            topk=None if sparse is None else _fraction(text, sparse[1] or ""),
            stochastic=rounding == SR,
        )

    def __str__(self) -> str:
        head = "" if self.topk is None else f"topk:{self.topk!r}+"
        tail = "+zstd" if self.zstd else ""
        return f"{head}{self.dtype}{':' + SR if self.stochastic else ''}{tail}"

    @property
    def bits_per_value(self) -> int:
        """Bits one stored value takes in the value stage: 32, 16, 16, 8, 4 or 1."""
        return STAGES[self.dtype].bits

    @property
    def shuffle_width(self) -> int:
        """Bytes per element the zstd byte shuffle transposes (1: the shuffle is the identity)."""
        return max(1, self.bits_per_value // 8)

    def value_bytes(self, n: int) -> int:
        """Bytes of n values stored by the value stage: ceil(n * bits / 8)."""
        return (n * self.bits_per_value + 7) // 8

    @property
    def lossy(self) -> bool:
        """True when decoding may differ from the input: use ErrorFeedback with such a codec."""
        # top-k drops zeros, -0.0 included (it decodes as +0.0): not bit-exact even at 1.0
        return not STAGES[self.dtype].lossless or self.topk is not None

    @property
    def scaled(self) -> bool:
        """True when chunks carry a dequantisation scale (int8, int4, sign); else scale is 1.0."""
        return self.dtype in ("int8", "int4", "sign")

    @property
    def dense(self) -> CodecSpec:
        """The same codec without top-k: what a sparse chunk falls back to when not smaller."""
        return CodecSpec(self.dtype, zstd=self.zstd, stochastic=self.stochastic)

    @property
    def raw(self) -> CodecSpec:
        """The same codec without zstd: what a chunk zstd does not shrink is sent as."""
        return CodecSpec(self.dtype, topk=self.topk, stochastic=self.stochastic)

    def keep(self, n: int) -> int:
        """How many of n values top-k keeps at most: ceil(FRACTION * n), exactly (n if dense).

        Computed on the decimal text of the fraction (0.1 * 30 is 3, not 4 as in floats).
        """
        if self.topk is None:
            return n
        frac = _exact(self.topk)
        return min(n, -(-n * frac.numerator // frac.denominator))


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> CodecSpec:
    return CodecSpec._parse(text)


@functools.lru_cache(maxsize=64)
def _exact(fraction: float) -> Fraction:
    """The fraction its shortest decimal text means: 0.1 is 1/10, not 0.1000000000000000055."""
    return Fraction(repr(fraction))


def codec_names() -> list[tuple[str, str]]:
    """(example spec, one-line description) for every codec family; every example parses."""
    return [
        ("fp32", "float32, lossless; 4 B/value"),
        ("fp32+zstd", "lossless; +zstd (byte-shuffle, zstd level 3) goes last in any codec"),
        ("fp16+zstd", "IEEE half, round to nearest even; 2 B/value before zstd"),
        ("bf16+zstd", "bfloat16 (top half of float32), round to nearest even; 2 B/value"),
        ("int8+zstd", "int8, symmetric absmax scale per chunk, round to nearest; 1 B/value"),
        ("int8:sr+zstd", "int8 with stochastic rounding (unbiased, seeded); 1 B/value"),
        ("int4+zstd", "int4, symmetric absmax scale per chunk, round to nearest; 0.5 B/value"),
        ("int4:sr+zstd", "int4 with stochastic rounding (unbiased, seeded); 0.5 B/value"),
        ("sign+zstd", "1 bit/value (the sign) and one scale per chunk: mean |x|"),
        (
            "topk:0.01+int8+zstd",
            "top-k: only the largest-|x| FRACTION of each chunk, with compact indices, "
            "then any value stage",
        ),
    ]
