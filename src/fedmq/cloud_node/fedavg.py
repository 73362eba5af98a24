"""FedAvg (McMahan et al. 2017): the sample-weighted mean of client deltas, streamed by slice.

Each update arrives as aligned slices of the flat delta. The aggregator adds `weight * delta`
into one float64 accumulator and keeps the weight sum per ALIGN-element block, so a slice lost
in transit costs only that slice (it keeps the weights of the clients that did arrive there),
and memory is one accumulator, not one model per client.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedmq.cloud_node.strategy import Selection
from fedmq.codec import ALIGN
from fedmq.codec.messages import SALT_SIZE, selection_hash, threshold_for


class FedAvgAggregator:
    def __init__(self, global_flat: np.ndarray) -> None:
        self._global = np.asarray(global_flat, dtype=np.float32)
        n = self._global.size
        self._sum = np.zeros(
            n, dtype=np.float64
        )  # float64: the sum barely depends on arrival order
        self._weight = np.zeros(math.ceil(n / ALIGN), dtype=np.float64)

    def add(self, client: str, offset: int, values: np.ndarray, weight: float) -> None:
        end = offset + values.size
        if offset % ALIGN or end > self._sum.size or not weight > 0:
            raise ValueError(f"bad slice from {client}: [{offset}, {end}) weight {weight}")
        self._sum[offset:end] += weight * values.astype(np.float64)
        self._weight[offset // ALIGN : math.ceil(end / ALIGN)] += weight

    def result(self) -> np.ndarray:
        weight = np.repeat(self._weight, ALIGN)[: self._sum.size]
        mean = np.divide(self._sum, weight, out=np.zeros_like(self._sum), where=weight > 0)
        return (self._global.astype(np.float64) + mean).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class FedAvg:
    fraction: float = 1.0  # share of online clients sampled per round
    min_clients: int = 1  # never sample fewer than this (when that many are online)
    name: str = "fedavg"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.min_clients < 1:
            raise ValueError(f"min_clients must be >= 1, got {self.min_clients}")

    def select(self, round: int, online: Sequence[str], rng: np.random.Generator) -> Selection:
        """The `k` clients whose selection hash under a seeded salt is smallest.

        Picking by hash lets the task name them with a salt and a threshold (16 bytes)
        instead of their ids; it is a uniform sample like any other seeded draw.
        """
        pool = sorted(online)
        k = min(len(pool), max(self.min_clients, math.ceil(self.fraction * len(pool))))
        if k == len(pool):  # everyone: no draw, so such runs sample nothing from `rng`
            salt = bytes(SALT_SIZE)
            return Selection(pool, salt=salt, threshold=threshold_for(salt, pool, ()) or salt)
        while True:  # two ids with the same 64-bit hash at the cut: about 2^-64 per draw
            salt = rng.bytes(SALT_SIZE)
            ranked = sorted(pool, key=lambda n: selection_hash(salt, n))
            threshold = threshold_for(salt, ranked[:k], ranked[k:])
            if threshold is not None:
                return Selection(ranked[:k], salt=salt, threshold=threshold)

    def aggregator(self, round: int, global_flat: np.ndarray) -> FedAvgAggregator:
        return FedAvgAggregator(global_flat)
