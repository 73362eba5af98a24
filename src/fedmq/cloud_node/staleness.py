"""Staleness weights for asynchronous updates: how much an update trained on an older model counts.

tau is the staleness: the current model version minus the version the client trained from
(0 = fresh). The functions are those of FedAsync (Xie et al. 2019), also used by FedBuff
(Nguyen et al. 2022):

    constant       s(tau) = 1
    poly[:a]       s(tau) = 1 / (1 + tau)^a                     a >= 0, default 0.5
    hinge[:a:b]    s(tau) = 1 if tau <= b else 1 / (a (tau - b) + 1)
                                                                a, b >= 0, default 10:4
    exp[:a]        s(tau) = exp(-a tau)                         a >= 0, default 0.5

Every weight lies in (0, 1] and is 1 for a fresh update. poly:0.5 is FedBuff's choice and
hinge 10:4 the setting of FedAsync's experiments; exp has no paper default, 0.5 makes each
version of staleness cost a factor of about 0.61.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedmq.errors import ConfigError

KINDS = ("constant", "poly", "hinge", "exp")
GRAMMAR = "constant, poly[:a], hinge[:a:b] or exp[:a] (a, b numbers >= 0)"
_DEFAULTS: dict[str, tuple[float, ...]] = {
    "constant": (),
    "poly": (0.5,),
    "hinge": (10.0, 4.0),
    "exp": (0.5,),
}


@dataclass(frozen=True, kw_only=True)
class Staleness:
    kind: str = "poly"  # one of KINDS
    a: float = 0.5  # poly exponent, hinge slope, exp rate; unused by constant
    b: float = 0.0  # hinge: staleness forgiven in full; unused by the others

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown staleness {self.kind!r}; expected {GRAMMAR}")
        for label, value in (("a", self.a), ("b", self.b)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"staleness {label} must be a number >= 0, got {value}")

    @classmethod
    def parse(cls, spec: str) -> Staleness:
        kind, *args = (part.strip() for part in spec.strip().lower().split(":"))
        defaults = _DEFAULTS.get(kind)
        if defaults is None or (args and len(args) != len(defaults)):
            raise ConfigError(f"bad staleness {spec!r}; expected {GRAMMAR}")
        try:
            values = [float(arg) for arg in args] if args else list(defaults)
        except ValueError as exc:
            raise ConfigError(f"bad staleness {spec!r}; expected {GRAMMAR}") from exc
        values += [0.0] * (2 - len(values))
        try:
            return cls(kind=kind, a=values[0], b=values[1])
        except ConfigError as exc:
            raise ConfigError(f"bad staleness {spec!r}: {exc}; expected {GRAMMAR}") from None

    def weight(self, tau: int) -> float:
        """s(tau) for a staleness of `tau` model versions (>= 0)."""
        if tau < 0:
            raise ValueError(f"staleness must be >= 0, got {tau}")
        if self.kind == "poly":
            return float((1.0 + tau) ** -self.a)
        if self.kind == "hinge":
            return 1.0 if tau <= self.b else 1.0 / (self.a * (tau - self.b) + 1.0)
        if self.kind == "exp":
            return math.exp(-self.a * tau)
        return 1.0

    def __str__(self) -> str:
        if self.kind == "hinge":
            return f"hinge:{self.a:g}:{self.b:g}"
        if self.kind in ("poly", "exp"):
            return f"{self.kind}:{self.a:g}"
        return self.kind
