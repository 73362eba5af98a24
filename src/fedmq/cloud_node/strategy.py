"""The strategy contract: pure objects that pick clients and fold updates into a new model.

The runtime owns sending, deadlines and failures; a strategy sees only client names, aligned
slices of update deltas and their weights. No sockets, no clocks, no randomness of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Aggregator(Protocol):
    """Folds one round's update slices into the next global model, one slice at a time."""

    def add(self, client: str, offset: int, values: np.ndarray, weight: float) -> None:
        """Fold `values` (a delta slice starting at `offset`) from `client` with `weight`."""

    def result(self) -> np.ndarray:
        """The new global model (float32, same shape as the one the round started from)."""


class Strategy(Protocol):
    @property
    def name(self) -> str:
        """Short name for logs and run records."""

    def select(
        self, round: int, online: Sequence[str], rng: np.random.Generator
    ) -> tuple[str, ...]:
        """The clients to train this round, chosen from `online` (sorted, so runs reproduce)."""

    def aggregator(self, round: int, global_flat: np.ndarray) -> Aggregator:
        """A fresh aggregator for `round`, starting from `global_flat`."""
