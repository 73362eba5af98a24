"""Codec spec grammar: stages NAME[:ARG] joined by "+", e.g. "fp16+zstd".

Every stage has a kind; kinds appear in the fixed order of `KINDS`, each at most once, and
exactly one "value" stage is required. A new stage (top-k, int4, sign...) is one `Stage` in
`STAGES`, plus a field of `CodecSpec` and a line in `CodecSpec._from_stages`; the parser stays.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmq.errors import CodecError

# Canonical order of stage kinds: how each element is stored, then byte-level transforms.
KINDS: tuple[str, ...] = ("value", "entropy")


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    kind: str  # one of KINDS
    help: str  # one line for `fedmq codecs`
    bytes_per_value: int = 0  # value stages only
    takes_arg: bool = False  # NAME:ARG; no current stage takes one


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("fp32", "value", "float32, lossless", 4),
        Stage("fp16", "value", "IEEE half, round-to-nearest-even", 2),
        Stage("bf16", "value", "bfloat16 (top 16 bits of float32), round-to-nearest-even", 2),
        Stage("int8", "value", "symmetric absmax int8, one scale per chunk", 1),
        Stage("zstd", "entropy", "byte-shuffle then zstd level 3"),
    )
}


def _valid() -> str:
    return ", ".join(STAGES) + " (joined by '+', e.g. 'fp16+zstd')"


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A parsed codec spec; `str(spec)` is its canonical text."""

    dtype: str  # a value stage: "fp32" | "fp16" | "bf16" | "int8"
    zstd: bool = False  # byte-shuffle + zstd level 3 over the stored values

    def __post_init__(self) -> None:
        stage = STAGES.get(self.dtype) if isinstance(self.dtype, str) else None
        if stage is None or stage.kind != "value":
            values = ", ".join(s.name for s in STAGES.values() if s.kind == "value")
            raise CodecError(f"CodecSpec.dtype must be one of {values}, got {self.dtype!r}")
        if not isinstance(self.zstd, bool):
            raise CodecError(f"CodecSpec.zstd must be a bool, got {self.zstd!r}")

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        if not isinstance(text, str) or not text:
            raise CodecError(f"empty or non-text codec spec {text!r}; valid stages: {_valid()}")
        parsed: list[tuple[Stage, str | None]] = []
        for token in text.split("+"):
            name, sep, arg = token.partition(":")
            stage = STAGES.get(name)
            if stage is None:
                raise CodecError(f"unknown codec stage {name!r} in {text!r}; valid: {_valid()}")
            if bool(sep) != stage.takes_arg or (sep and not arg):
                need = "needs an argument" if stage.takes_arg else "takes no argument"
                raise CodecError(f"codec stage {name!r} {need} in {text!r}")
            if parsed and KINDS.index(stage.kind) <= KINDS.index(parsed[-1][0].kind):
                order = " + ".join(KINDS)
                raise CodecError(f"codec stages out of order or repeated in {text!r}: {order}")
            parsed.append((stage, arg if sep else None))
        return cls._from_stages(text, parsed)

    @classmethod
    def _from_stages(cls, text: str, parsed: list[tuple[Stage, str | None]]) -> CodecSpec:
        by_kind = {stage.kind: stage.name for stage, _ in parsed}
        if "value" not in by_kind:
            raise CodecError(f"codec spec {text!r} names no value stage; valid: {_valid()}")
        return cls(dtype=by_kind["value"], zstd=by_kind.get("entropy") == "zstd")

    def __str__(self) -> str:
        return self.dtype + ("+zstd" if self.zstd else "")

    @property
    def bytes_per_value(self) -> int:
        return STAGES[self.dtype].bytes_per_value


def codec_names() -> list[tuple[str, str]]:
    """(canonical spec, one-line description) of every codec this build speaks."""
    out: list[tuple[str, str]] = []
    zstd = STAGES["zstd"].help
    for stage in STAGES.values():
        if stage.kind == "value":
            out.append((stage.name, stage.help))
            out.append((f"{stage.name}+zstd", f"{stage.help}; {zstd}"))
    return out
