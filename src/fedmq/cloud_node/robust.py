"""Byzantine-robust strategies: coordinate-wise median, trimmed mean, (multi-)Krum, norm clipping.

Each is a `Strategy`: it selects clients as `FedAvg` does (by composition) and hands out a
`RobustAggregator`. Robust rules need every client's whole delta at once, so they cannot stream:
the aggregator buffers each client's aligned slices into one full-size float32 vector (memory:
one float32 vector per client, plus one float64 result and O(clients x BLOCK) scratch) and
decides in `result()`:

1. **Incomplete** clients (some block of their delta never arrived) are dropped and listed in
   `incomplete`; unlike FedAvg's per-block mean, a robust rule compares whole vectors.
2. **Screening** rejects, in this order, a delta with any NaN/Inf, a delta whose L2 norm is over
   `reject_norm` (default 1e6: absurd for any model we train), then a delta whose norm is over
   `reject_ratio` (default 100) times the median norm of the deltas still in (skipped when that
   median is 0). Rejected clients and the reason are recorded in `rejected`.
3. The rule combines the remaining deltas; the new model is `global + rule(deltas)` in float32.
   With no delta left the global model is returned unchanged.

Weights are the clients' own claims (`num_samples`). Median, TrimmedMean and the Krum selection
ignore them (one client, one vote), so a client cannot buy influence by lying about its size;
the multi-Krum average and NormClip's mean use them, as FedAvg does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedmq.cloud_node.fedavg import FedAvg
from fedmq.codec import ALIGN

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Rule = Callable[[Sequence[F32], F64], F64]  # (deltas, weights) -> aggregate delta, float64 (P,)

BLOCK = 1 << 16  # coordinates processed at once by the coordinate-wise rules (scratch memory)


def _blocks(size: int) -> range:
    return range(0, size, BLOCK)


def sq_norm(v: F32) -> float:
    """Squared L2 norm, accumulated in float64 block by block (no full float64 copy)."""
    total = 0.0
    for s in _blocks(v.size):
        b = v[s : s + BLOCK].astype(np.float64)
        total += float(np.dot(b, b))
    return total


def krum_scores(deltas: Sequence[F32], f: int) -> F64:
    """Krum score of each delta (Blanchard et al. 2017): the sum of its squared distances to its
    n - f - 2 nearest other deltas (at least 1, at most n - 1; 0 when n == 1)."""
    n = len(deltas)
    if n <= 1:
        return np.zeros(n, dtype=np.float64)
    size = deltas[0].size
    dist = np.zeros((n, n), dtype=np.float64)
    for s in _blocks(size):
        x = np.stack([d[s : s + BLOCK] for d in deltas]).astype(np.float64)  # (n, b)
        gram = x @ x.T  # (n, n)
        sq = np.diag(gram)
        dist += sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)  # rounding can leave tiny negatives
    near = min(max(n - f - 2, 1), n - 1)
    others = np.sort(dist + np.diag(np.full(n, np.inf)), axis=1)[:, :near]  # self excluded
    return np.asarray(others.sum(axis=1), dtype=np.float64)


def _weighted_sum(deltas: Sequence[F32], coeffs: F64) -> F64:
    out = np.zeros(deltas[0].size, dtype=np.float64)
    for d, c in zip(deltas, coeffs, strict=True):
        out += c * d.astype(np.float64)
    return out


def _coordinatewise(deltas: Sequence[F32], reduce: Callable[[F64], F64]) -> F64:
    out = np.empty(deltas[0].size, dtype=np.float64)
    for s in _blocks(out.size):
        out[s : s + BLOCK] = reduce(np.stack([d[s : s + BLOCK] for d in deltas]).astype(np.float64))
    return out


class RobustAggregator:
    """Buffers each client's slices into a full float32 delta; robust `rule` in `result()`.

    After `result()`: `used` (clients the rule saw, sorted), `rejected` (client -> reason),
    `incomplete` (clients dropped for a missing block), each recomputed on every call.
    """

    def __init__(
        self,
        global_flat: np.ndarray,
        rule: Rule,
        *,
        reject_norm: float = 1e6,
        reject_ratio: float = 100.0,
    ) -> None:
        self._global = np.asarray(global_flat, dtype=np.float32)
        self._rule = rule
        self.reject_norm = reject_norm
        self.reject_ratio = reject_ratio
        self._blocks = math.ceil(self._global.size / ALIGN)
        self._deltas: dict[str, F32] = {}  # one float32 vector per client
        self._arrived: dict[str, npt.NDArray[np.bool_]] = {}  # per ALIGN block
        self._weights: dict[str, float] = {}
        self.used: tuple[str, ...] = ()
        self.rejected: dict[str, str] = {}
        self.incomplete: tuple[str, ...] = ()

    def add(self, client: str, offset: int, values: np.ndarray, weight: float) -> None:
        """Copy a slice into `client`'s buffer. A block sent twice keeps the later values."""
        n = self._global.size
        end = offset + values.size
        aligned_end = end % ALIGN == 0 or end == n
        if offset % ALIGN or end > n or not aligned_end or values.ndim != 1:
            raise ValueError(f"bad slice from {client}: [{offset}, {end}) of {n}")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"bad weight from {client}: {weight}")
        if client not in self._deltas:
            self._deltas[client] = np.zeros(n, dtype=np.float32)
            self._arrived[client] = np.zeros(self._blocks, dtype=np.bool_)
            self._weights[client] = float(weight)
        self._deltas[client][offset:end] = values
        self._arrived[client][offset // ALIGN : math.ceil(end / ALIGN)] = True

    def _screen(self, clients: list[str]) -> list[str]:
        norms: dict[str, float] = {}
        for c in clients:
            delta = self._deltas[c]
            if not np.isfinite(delta).all():
                self.rejected[c] = "NaN or Inf"
                continue
            norm = math.sqrt(sq_norm(delta))
            if not norm <= self.reject_norm:
                self.rejected[c] = f"norm {norm:.3g} > {self.reject_norm:.3g}"
                continue
            norms[c] = norm
        median = float(np.median(list(norms.values()))) if norms else 0.0
        bound = self.reject_ratio * median
        if median > 0:
            for c, norm in norms.items():
                if norm > bound:
                    self.rejected[c] = f"norm {norm:.3g} > {self.reject_ratio:g} x median"
        return [c for c in norms if c not in self.rejected]

    def result(self) -> np.ndarray:
        self.rejected = {}
        clients = sorted(self._deltas)
        complete = [c for c in clients if self._arrived[c].all()]
        self.incomplete = tuple(c for c in clients if c not in complete)
        self.used = tuple(self._screen(complete))
        if not self.used:
            return self._global.copy()
        deltas = [self._deltas[c] for c in self.used]
        weights = np.array([self._weights[c] for c in self.used], dtype=np.float64)
        agg = self._rule(deltas, weights)
        return (self._global.astype(np.float64) + agg).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class _Robust:
    """Fields and `select` shared by every robust strategy; subclasses define `combine`."""

    fraction: float = 1.0  # share of online clients sampled per round (as FedAvg)
    min_clients: int = 1  # never sample fewer than this (as FedAvg)
    reject_norm: float = 1e6  # a delta with a larger L2 norm is rejected outright
    reject_ratio: float = 100.0  # ... and one over this many times the median norm
    name: str = "robust"
    _sampler: FedAvg = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_sampler", FedAvg(fraction=self.fraction, min_clients=self.min_clients)
        )
        if not self.reject_norm > 0 or not self.reject_ratio >= 1:
            raise ValueError(
                f"need reject_norm > 0 and reject_ratio >= 1, got "
                f"{self.reject_norm}, {self.reject_ratio}"
            )

    def select(
        self, round: int, online: Sequence[str], rng: np.random.Generator
    ) -> tuple[str, ...]:
        return self._sampler.select(round, online, rng)

    def combine(self, deltas: Sequence[F32], weights: F64) -> F64:
        raise NotImplementedError

    def aggregator(self, round: int, global_flat: np.ndarray) -> RobustAggregator:
        return RobustAggregator(
            global_flat,
            self.combine,
            reject_norm=self.reject_norm,
            reject_ratio=self.reject_ratio,
        )


@dataclass(frozen=True, kw_only=True)
class Median(_Robust):
    """Coordinate-wise median (Yin et al. 2018); the mean of the two middle values for even n."""

    name: str = "median"

    def combine(self, deltas: Sequence[F32], weights: F64) -> F64:
        return _coordinatewise(deltas, lambda x: np.asarray(np.median(x, axis=0)))


@dataclass(frozen=True, kw_only=True)
class TrimmedMean(_Robust):
    """Per coordinate, drop the floor(trim * n) largest and smallest values and average the rest
    (Yin et al. 2018). trim=0 is the unweighted mean."""

    trim: float = 0.2  # fraction dropped at each end, in [0, 0.5)
    name: str = "trimmed_mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")

    def combine(self, deltas: Sequence[F32], weights: F64) -> F64:
        cut = math.floor(self.trim * len(deltas))

        def reduce(x: F64) -> F64:
            x.sort(axis=0)
            return np.asarray(x[cut : len(deltas) - cut].mean(axis=0))

        return _coordinatewise(deltas, reduce)


@dataclass(frozen=True, kw_only=True)
class Krum(_Robust):
    """Krum (Blanchard et al. 2017): the delta with the lowest score (`krum_scores`), assuming at
    most `f` Byzantine clients; multi-Krum with `multi` = m averages the m best, sample-weighted.
    Ties go to the earlier client in name order. The guarantee needs n > 2f + 2."""

    f: int = 1  # Byzantine clients tolerated
    multi: int = 1  # m: deltas averaged; 1 is Krum
    name: str = "krum"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.f < 0 or self.multi < 1:
            raise ValueError(f"need f >= 0 and multi >= 1, got f={self.f}, multi={self.multi}")

    def combine(self, deltas: Sequence[F32], weights: F64) -> F64:
        scores = krum_scores(deltas, self.f)
        best = np.argsort(scores, kind="stable")[: self.multi]
        return _weighted_sum([deltas[i] for i in best], weights[best]) / float(weights[best].sum())


@dataclass(frozen=True, kw_only=True)
class NormClip(_Robust):
    """Clip each delta to L2 norm `max_norm` (None: the median of this round's norms, adaptive),
    then take the sample-weighted mean. It bounds each client's pull, it does not remove it."""

    max_norm: float | None = None  # fixed bound, or None for the median norm
    name: str = "normclip"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_norm is not None and not self.max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {self.max_norm}")

    def combine(self, deltas: Sequence[F32], weights: F64) -> F64:
        norms = np.sqrt([sq_norm(d) for d in deltas])
        bound = float(np.median(norms)) if self.max_norm is None else self.max_norm
        scale = np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))
        return _weighted_sum(deltas, weights * scale) / float(weights.sum())
