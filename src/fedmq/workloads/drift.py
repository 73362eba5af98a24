"""Drifting or growing local data, for continual learning: the part of its shard an edge trains on
in round r of R (1-based). Pure and seeded: the same inputs give the same samples.

    none              the whole shard, every round
    grow[:f]          the edge starts with a fraction f of its shard (default 0.5) and gains an
                      equal share each round until it holds all of it in round R:
                      count(r) = k + (n - k) * (r - 1) // (R - 1), k = ceil(f * n) (all if R = 1).
                      The samples are a prefix of one seeded permutation, so each round's set
                      contains the previous one.
    labels[:p[:w]]    a label mix that rotates (default p 0.9, w 2): in round r the window holds
                      the w classes (r - 1), (r - 1) + 1, ... mod num_classes, moving by one class
                      per round; n samples are drawn with replacement, by an rng seeded with
                      (seed, r), each sample of class c with probability proportional to
                      (1 - p) + p * [c in window].

For "labels", drawing with replacement gives the weighted label mix exactly in expectation (without
replacement, the window's classes run out and the mix flattens), and n draws keep a round's cost
equal to the whole shard's. A sample may appear more than once, which SGD treats as a larger
weight on it. p < 1 keeps every sample drawable, so a shard without the window's classes still
yields data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedmq.errors import ConfigError
from fedmq.workloads.data import Dataset

KINDS = ("none", "grow", "labels")
GRAMMAR = "none, grow[:f] (0 < f <= 1) or labels[:p[:w]] (0 <= p < 1, w >= 1 classes)"


@dataclass(frozen=True, kw_only=True)
class DriftSpec:
    kind: str = "none"  # one of KINDS
    fraction: float = 0.5  # grow: share of the shard held in round 1
    p: float = 0.9  # labels: weight moved onto the window's classes
    width: int = 2  # labels: classes in the window

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown drift {self.kind!r}; expected {GRAMMAR}")
        if not (math.isfinite(self.fraction) and 0 < self.fraction <= 1):
            raise ConfigError(f"grow fraction must be in (0, 1], got {self.fraction}")
        if not (math.isfinite(self.p) and 0 <= self.p < 1):
            raise ConfigError(f"labels p must be in [0, 1), got {self.p}")
        if self.width < 1:
            raise ConfigError(f"labels window must be >= 1 class, got {self.width}")

    @classmethod
    def parse(cls, spec: str) -> DriftSpec:
        kind, *args = (part.strip() for part in spec.strip().lower().split(":"))
        most = {"none": 0, "grow": 1, "labels": 2}.get(kind)
        if most is None or len(args) > most:
            raise ConfigError(f"bad drift {spec!r}; expected {GRAMMAR}")
        try:
            if kind == "grow":
                return cls(kind=kind, fraction=float(args[0])) if args else cls(kind=kind)
            if kind == "labels":
                p = float(args[0]) if args else cls.p
                width = int(args[1]) if len(args) > 1 else cls.width
                return cls(kind=kind, p=p, width=width)
            return cls(kind=kind)
        except ValueError as exc:  # ConfigError is a ValueError too: one message for both
            raise ConfigError(f"bad drift {spec!r}: {exc}; expected {GRAMMAR}") from None

    def __str__(self) -> str:
        if self.kind == "grow":
            return f"grow:{self.fraction:g}"
        if self.kind == "labels":
            return f"labels:{self.p:g}:{self.width}"
        return self.kind


def window(round: int, width: int, num_classes: int) -> tuple[int, ...]:
    """The classes favoured in `round` (1-based) by "labels" drift."""
    return tuple((round - 1 + j) % num_classes for j in range(min(width, num_classes)))


def data_for_round(
    shard: Dataset, spec: DriftSpec, *, round: int, rounds: int, seed: int
) -> Dataset:
    """The samples of `shard` an edge trains on in `round` of `rounds` (see the module docstring).

    "none" and an empty shard return `shard` itself; otherwise a new `Dataset` (`shard.subset`).
    """
    if not 1 <= round <= rounds:
        raise ValueError(f"round must be in [1, {rounds}], got {round}")
    n = len(shard)
    if spec.kind == "none" or n == 0:
        return shard
    if spec.kind == "grow":
        start = math.ceil(spec.fraction * n)
        count = n if rounds == 1 else start + (n - start) * (round - 1) // (rounds - 1)
        order = np.random.default_rng(seed).permutation(n)
        return shard.subset(np.sort(order[:count]))
    favoured = np.isin(shard.y, window(round, spec.width, shard.num_classes))
    weights = (1.0 - spec.p) + spec.p * favoured
    rng = np.random.default_rng([seed, round])
    picked = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    return shard.subset(np.sort(picked))
