"""Norm screening: an update slice far larger than the reference is clipped, whatever the rule.

A valid identity within its declared weight and under the value bound (|x| <= 1e4) can still
send an update whose norm is a thousand times an honest one, and FedAvg would take it at face
value. Robust strategies (median, Krum...) resist that, but only when the user picks one. This
screen works under every strategy: the L2 norm of each accepted update slice (one chunk: the
same `[offset, offset + length)` for every edge that uses the same codec and payload size) is
compared with a reference: the median of that slice's norms in the last round that had at least
`min_samples` of them or, before there is one, the norm of the global model's own slice (no
honest training step moves a slice by ten times its size). Above `factor` times the reference
the slice is scaled down to that bound before it reaches the aggregator. Honest updates shrink
as training converges but do not jump tenfold between rounds: the default clips nothing in the
default run or in top-k runs (their rounds are unchanged bit for bit). Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Slice = tuple[int, int]  # (offset, length)


@dataclass
class NormScreen:
    factor: float = 10.0  # clip a slice above this many times the reference median norm
    min_samples: int = 3  # norms a round needs for its median to become a reference
    clipped: int = 0  # slices clipped so far
    peak: float = 0.0  # the largest norm / reference seen since the last end_round
    _reference: dict[Slice, float] = field(default_factory=dict)
    _this_round: dict[Slice, list[float]] = field(default_factory=dict)
    _model: np.ndarray | None = None  # the round's global model: the first reference

    def begin_round(self, model: np.ndarray) -> None:
        self._model = model

    def screen(self, offset: int, values: np.ndarray) -> np.ndarray:
        """`values`, or a copy scaled to the bound if its norm is above it. Records the norm
        it lets through (so one attacker cannot raise next round's reference)."""
        key = (offset, int(values.size))
        norm = float(np.linalg.norm(values.astype(np.float64)))
        bound = self.reference(offset, int(values.size))
        if bound:
            self.peak = max(self.peak, norm / bound)
        if bound is not None and norm > self.factor * bound > 0:
            self.clipped += 1
            scale = self.factor * bound / norm
            values = (values * scale).astype(values.dtype)
            norm = self.factor * bound
        self._this_round.setdefault(key, []).append(norm)
        return values

    def end_round(self) -> None:
        """The round's norms become the reference of the slices that had enough of them."""
        for key, norms in self._this_round.items():
            if len(norms) >= self.min_samples:
                self._reference[key] = float(np.median(norms))
        self._this_round.clear()
        self.peak = 0.0

    def reference(self, offset: int, length: int) -> float | None:
        """The last median norm of this slice, else the model's own slice norm, else None."""
        ref = self._reference.get((offset, length))
        if ref is None and self._model is not None and offset + length <= self._model.size:
            ref = float(np.linalg.norm(self._model[offset : offset + length].astype(np.float64)))
        return ref if ref else None

    def bound(self, offset: int, length: int) -> float | None:
        """The largest norm a slice may have now (None: no reference yet)."""
        ref = self.reference(offset, length)
        return None if ref is None else self.factor * ref
