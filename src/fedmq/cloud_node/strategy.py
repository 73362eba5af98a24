"""The strategy contract: pure objects that pick clients and fold updates into a new model.

The runtime owns sending, deadlines and failures; a strategy sees only client names, aligned
slices of update deltas and their weights. No sockets, no clocks, no randomness of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from fedmq.codec.messages import SALT_SIZE, threshold_for
from fedmq.errors import ConfigError


class Selection(tuple[str, ...]):
    """The clients chosen for a round (sorted), with the salt and threshold that name exactly
    them on the wire: a RoundTask selects an edge iff selection_hash(salt, id) <= threshold."""

    salt: bytes
    threshold: bytes

    def __new__(cls, ids: Iterable[str], *, salt: bytes, threshold: bytes) -> Selection:
        self = super().__new__(cls, sorted(ids))
        self.salt, self.threshold = salt, threshold
        return self


def named(chosen: Sequence[str], population: Iterable[str]) -> Selection:
    """`chosen` as a Selection that selects none of the rest of `population`.

    A strategy that returns a Selection has named its clients already; a plain tuple is named
    with the all-zero salt, which works when it holds every client of `population` (async
    tasks, chain passes, FedAvg at fraction 1) but not for an arbitrary subset.
    """
    if isinstance(chosen, Selection):
        return chosen
    salt = bytes(SALT_SIZE)
    others = set(population) - set(chosen)
    threshold = threshold_for(salt, chosen, others)
    if threshold is None:
        raise ConfigError(
            f"a selection of {len(chosen)} of {len(others) + len(chosen)} clients that is not "
            "a Selection: strategies must pick by selection hash (FedAvg.select)"
        )
    return Selection(chosen, salt=salt, threshold=threshold)


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
        """The clients to train this round, chosen from `online` (sorted, so runs reproduce);
        a `Selection` unless it is all of `online`."""

    def aggregator(self, round: int, global_flat: np.ndarray) -> Aggregator:
        """A fresh aggregator for `round`, starting from `global_flat`."""
