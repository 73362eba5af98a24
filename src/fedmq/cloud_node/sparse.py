"""FedAvg for sparse updates: each coordinate's mean is scaled back up by how diluted it was,
decided per chunk by what the edges actually sent.

FedAvg divides every coordinate by the weight of every update that covered its block. A top-k
chunk (error feedback keeps the rest for later) carries a handful of non-zeros; a coordinate
that one edge in ten sent is divided by all ten and moves a tenth of what that edge proposed,
the rest waiting in the edges' residuals. On the digits MLP that lag cost 1.05 points at 30
rounds (topk:0.01, median of seeds 0-2 on the validation split).

Here a coordinate's mean is multiplied by `W / S`, where W is the weight FedAvg divides by and S
the weight of the updates that actually sent that coordinate (a non-zero in a sparse chunk, or
any value of a dense chunk), at most `cap`:

- Dense chunks count as sending every coordinate, so S = W and the result is FedAvg exactly,
  whatever codec the cloud was told; an edge that sends top-k gets the correction whatever the
  cloud's `--codec` says; in a mixed fleet a coordinate that a sparse edge left at zero is
  scaled by the share of weight that did send it.
- A coordinate that every edge sent (the CNN's top-k keeps choosing the same few) is not
  scaled at all. A constant server lr scaled those too: lr 3 sent the CNN to chance.
- Uncapped (the mean over each coordinate's senders only, as masked/partial averaging does)
  loses 9 points on the MLP: with error feedback a sent value is several rounds of that edge's
  change, so dividing by its own weight alone counts it up to ten times. Capped at 2 the total
  step stays within twice FedAvg's on every coordinate. `bench/topk_study.py` measured caps 2
  and 3 on the validation split of both models: the same median (+0.35 points against fp32 on
  each), so the smaller step (docs/benchmarks.md).
- Only chunks at most MAX_DENSITY non-zero count as sparse: at top-k 10% the correction cost
  a point on the MLP, and such chunks are aggregated as FedAvg does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedmq.cloud_node.fedavg import FedAvg, FedAvgAggregator
from fedmq.codec import ALIGN

CAP = 2.0  # no coordinate moves more than CAP x its FedAvg mean (see the module docstring)
# A chunk at most this share non-zero is sparse. Measured on the MLP's validation split (median
# of seeds 0-2 against FedAvg on the same codec): +0.70 points at top-k 1%, +0.70 at 2%, +0.35
# at 5%, but -1.05 at 10%, where residuals drain within a few rounds and there is little lag to
# make up. fp32 and int8 chunks are mostly non-zero (no chunk of theirs came near this).
MAX_DENSITY = 0.05


class SparseAggregator:
    """FedAvg's streamed mean, with each coordinate rescaled by min(cap, W / senders' weight).

    Memory: FedAvg's float64 accumulator plus one float64 vector of senders' weights, allocated
    on the first sparse chunk (a round of dense chunks never allocates it).
    """

    def __init__(
        self, global_flat: np.ndarray, *, cap: float = CAP, max_density: float = MAX_DENSITY
    ) -> None:
        self._global = np.asarray(global_flat, dtype=np.float32)
        self._inner = FedAvgAggregator(self._global)
        self._cap = cap
        self._max_density = max_density
        # FedAvg's divisor, W, per ALIGN-element block (kept here too: FedAvg's is private)
        self._weight = np.zeros(math.ceil(self._global.size / ALIGN), dtype=np.float64)
        self._sent: np.ndarray | None = None  # per coordinate: weight of the updates that sent it
        self._dense: list[tuple[int, int, float]] = []  # dense slices before the first sparse one
        self._result: np.ndarray | None = None
        self.sparse_chunks = 0

    def add(self, client: str, offset: int, values: np.ndarray, weight: float) -> None:
        self._inner.add(client, offset, values, weight)  # checks the slice first
        end = offset + values.size
        self._weight[offset // ALIGN : math.ceil(end / ALIGN)] += weight
        # ceil: a top-k 5% chunk keeps ceil(0.05 n) values, which must still count as sparse
        most = math.ceil(self._max_density * values.size - 1e-9)
        sparse = values.size > 0 and np.count_nonzero(values) <= most
        if not sparse:
            if self._sent is None:
                self._dense.append((offset, end, weight))
            else:
                self._sent[offset:end] += weight
            return
        self.sparse_chunks += 1
        if self._sent is None:
            self._sent = np.zeros(self._global.size, dtype=np.float64)
            for start, stop, w in self._dense:
                self._sent[start:stop] += w
            self._dense.clear()
        self._sent[offset:end] += weight * (np.asarray(values) != 0)

    def result(self) -> np.ndarray:
        if self._result is None:
            self._result = self._step()
        return self._result.copy()

    def scale(self) -> np.ndarray | None:
        """Each coordinate's factor on its FedAvg mean; None when every chunk was dense."""
        if self._sent is None:
            return None
        weight = np.repeat(self._weight, ALIGN)[: self._global.size]
        factor = np.divide(weight, self._sent, out=np.ones_like(weight), where=self._sent > 0)
        capped: np.ndarray = np.minimum(factor, self._cap)
        return capped

    def _step(self) -> np.ndarray:
        base = self._inner.result()
        factor = self.scale()
        if factor is None:
            return base  # FedAvg exactly
        g = self._global.astype(np.float64)
        return (g + factor * (base.astype(np.float64) - g)).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class SparseFedAvg:
    """FedAvg's selection; FedAvg's mean with sparse coordinates scaled back up (see above).

    Named "fedavg": with dense updates it is FedAvg to the bit, and a run's record should not
    depend on the codec its edges chose.
    """

    base: FedAvg
    cap: float = CAP
    max_density: float = MAX_DENSITY
    name: str = "fedavg"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cap) and self.cap >= 1.0):
            raise ValueError(f"cap must be a finite number >= 1, got {self.cap}")
        if not 0.0 < self.max_density < 1.0:
            raise ValueError(f"max_density must be in (0, 1), got {self.max_density}")

    def select(
        self, round: int, online: Sequence[str], rng: np.random.Generator
    ) -> tuple[str, ...]:
        return self.base.select(round, online, rng)

    def aggregator(self, round: int, global_flat: np.ndarray) -> SparseAggregator:
        return SparseAggregator(global_flat, cap=self.cap, max_density=self.max_density)
