"""FedBuff (Nguyen et al. 2022): the pure core of the asynchronous cloud.

Clients train whenever they can from whatever model version they last received and send their
delta (trained - base model). The cloud offers each one to a `FedBuffer`, which judges it, in
this order:

1. FUTURE     the base version is newer than the current one (impossible unless forged)
2. TOO_STALE  tau = current - base > `max_staleness`
3. DUPLICATE  this client already has an update for this base version in the buffer
4. BAD        base version < 0, num_samples < 1, a delta of the wrong shape, or NaN/Inf in it
5. ACCEPTED   added to the buffer with staleness weight s(tau) (see `staleness`)

Once `buffer_size` (K) updates are accepted the buffer is `ready`, and `flush()` returns the
aggregate delta of exactly those K (updates accepted meanwhile wait for the next step, so a
step's size never depends on how busy the cloud was), in float32,

    flush() = server_lr * sum_i(s(tau_i) * n_i * delta_i) / sum_i(n_i)

over the accepted updates i, with n_i their claimed sample counts, and empties the buffer. With
every update fresh (tau = 0) and server_lr = 1 this is FedAvg's sample-weighted mean. Staleness
weights are not renormalized: a buffer of stale updates moves the model less, as in FedBuff's
(server_lr / K) * sum_i(s(tau_i) * delta_i), which this is when every n_i is equal. The caller
adds the aggregate to the model (or hands it to a `ServerOptimizer`) and bumps the version.

Memory: one float64 accumulator of the model's size, plus one vector per update that arrives
while the buffer is full (at most one per edge and base version).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from fedmq.cloud_node.staleness import Staleness
from fedmq.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class FedBuffConfig:
    buffer_size: int = 5  # K: apply after this many accepted updates
    max_staleness: int = 10  # updates based on a version older than current - this are rejected
    staleness: str = "poly:0.5"  # weight of a stale update; grammar in `Staleness.parse`
    server_lr: float = 1.0  # scales every aggregate; 1 keeps FedAvg's step when all are fresh

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ConfigError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if self.max_staleness < 0:
            raise ConfigError(f"max_staleness must be >= 0, got {self.max_staleness}")
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            raise ConfigError(f"server_lr must be a positive number, got {self.server_lr}")
        Staleness.parse(self.staleness)  # fail at configuration, not at the first update


class Offer(enum.Enum):
    ACCEPTED = "accepted"
    TOO_STALE = "too_stale"  # base version older than current - max_staleness
    FUTURE = "future"  # base version newer than current: impossible, or forged
    DUPLICATE = "duplicate"  # the client already has an update for that base in this buffer
    BAD = "bad"  # wrong shape, NaN/Inf, a negative version or no samples


@dataclass
class FedBuffCounters:
    """Offers by verdict since the buffer was made (or restored), across flushes."""

    accepted: int = 0
    too_stale: int = 0
    future: int = 0
    duplicate: int = 0
    bad: int = 0

    def count(self, offer: Offer) -> None:
        setattr(self, offer.value, getattr(self, offer.value) + 1)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


_COUNTER_NAMES = tuple(f.name for f in fields(FedBuffCounters))


class FedBuffer:
    def __init__(self, *, size: int, config: FedBuffConfig) -> None:
        if size < 1:
            raise ValueError(f"model size must be >= 1, got {size}")
        self.size = size
        self.config = config
        self.staleness = Staleness.parse(config.staleness)
        self.counters = FedBuffCounters()
        self._sum = np.zeros(size, dtype=np.float64)  # sum_i s_i n_i delta_i
        self._samples = 0.0  # sum_i n_i
        self._keys: list[tuple[str, int]] = []  # (client, base version) in the buffer
        # Accepted while the buffer was already full: each waits, whole, for a later step, so
        # that every step applies exactly K updates however fast they arrive.
        self._queue: list[tuple[str, int, np.ndarray, float]] = []

    @property
    def pending(self) -> int:
        """Updates accepted and not yet applied (in the buffer or waiting for the next one)."""
        return len(self._keys) + len(self._queue)

    @property
    def filled(self) -> int:
        """Updates in the buffer, the ones the next `flush` applies."""
        return len(self._keys)

    @property
    def samples(self) -> float:
        """Sum of the claimed samples of the updates in the buffer."""
        return self._samples

    @property
    def ready(self) -> bool:
        return self.filled >= self.config.buffer_size

    def offer(
        self,
        client: str,
        base_version: int,
        current_version: int,
        delta: np.ndarray,
        num_samples: int,
        *,
        capacity: int | None = None,
    ) -> tuple[Offer, float]:
        """Judge one update and, if accepted, add it; (verdict, staleness weight or 0).

        With the buffer holding `capacity` (default K) updates already, an accepted update
        waits in arrival order for the buffer after the next `flush`."""
        if current_version < 0:
            raise ValueError(f"current_version must be >= 0, got {current_version}")
        verdict = self._judge(client, base_version, current_version, delta, num_samples)
        self.counters.count(verdict)
        if verdict is not Offer.ACCEPTED:
            return verdict, 0.0
        weight = self.staleness.weight(current_version - base_version)
        values = np.asarray(delta, dtype=np.float64)
        if self._queue or len(self._keys) >= (capacity or self.config.buffer_size):
            self._queue.append((client, base_version, (weight * num_samples) * values,
                                float(num_samples)))  # fmt: skip
        else:
            self._add(client, base_version, (weight * num_samples) * values, num_samples)
        return verdict, weight

    def _add(self, client: str, base: int, weighted: np.ndarray, num_samples: float) -> None:
        self._sum += weighted
        self._samples += num_samples
        self._keys.append((client, base))

    def _judge(
        self, client: str, base: int, current: int, delta: np.ndarray, num_samples: int
    ) -> Offer:
        if base > current:
            return Offer.FUTURE
        if current - base > self.config.max_staleness:
            return Offer.TOO_STALE
        if (client, base) in self._keys or any(
            (c, b) == (client, base) for c, b, _, _ in self._queue
        ):
            return Offer.DUPLICATE
        values = np.asarray(delta)
        if base < 0 or num_samples < 1 or values.shape != (self.size,):
            return Offer.BAD
        if values.dtype.kind not in "fiu" or not np.isfinite(values).all():
            return Offer.BAD
        return Offer.ACCEPTED

    def flush(self, capacity: int | None = None) -> np.ndarray:
        """The aggregate delta (float32, see the module docstring) of the updates in the
        buffer; then refills it, up to `capacity` (default K), from those waiting."""
        if not self._keys:
            raise RuntimeError("flush of an empty FedBuff buffer")
        out = (self.config.server_lr * self._sum / self._samples).astype(np.float32)
        self._sum[:] = 0.0
        self._samples = 0.0
        self._keys.clear()
        room = capacity or self.config.buffer_size
        while self._queue and len(self._keys) < room:
            client, base, weighted, num_samples = self._queue.pop(0)
            self._add(client, base, weighted, num_samples)
        return out

    def state(self) -> dict[str, np.ndarray]:
        """Arrays for a checkpoint: the pending sum and who is in it, and the counters.

        Updates waiting for a later buffer are folded into this one: after a restart the first
        step may apply more than K updates, but none is lost."""
        while self._queue:
            client, base, weighted, num_samples = self._queue.pop(0)
            self._add(client, base, weighted, num_samples)
        return {
            "sum": self._sum.copy(),
            "samples": np.array(self._samples, dtype=np.float64),
            "clients": np.array([c for c, _ in self._keys], dtype=np.str_),
            "bases": np.array([b for _, b in self._keys], dtype=np.int64),
            "counters": np.array([getattr(self.counters, n) for n in _COUNTER_NAMES], np.int64),
        }

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        missing = {"sum", "samples", "clients", "bases", "counters"} - set(state)
        if missing:
            raise ValueError(f"FedBuff state lacks {sorted(missing)}")
        total = np.array(state["sum"], dtype=np.float64)
        samples = float(np.asarray(state["samples"]))
        clients = [str(c) for c in np.asarray(state["clients"]).reshape(-1)]
        bases = [int(b) for b in np.asarray(state["bases"]).reshape(-1)]
        counters = [int(c) for c in np.asarray(state["counters"]).reshape(-1)]
        if total.shape != (self.size,) or not np.isfinite(total).all():
            raise ValueError(f"FedBuff state 'sum' must be finite of shape ({self.size},)")
        if len(clients) != len(bases) or (clients and not samples > 0) or samples < 0:
            raise ValueError("FedBuff state: clients, bases and samples disagree")
        if len(counters) != len(_COUNTER_NAMES) or min(counters) < 0:
            raise ValueError(f"FedBuff state 'counters' must be {len(_COUNTER_NAMES)} ints >= 0")
        self._sum = total
        self._samples = samples
        self._keys = list(zip(clients, bases, strict=True))
        self.counters = FedBuffCounters(**dict(zip(_COUNTER_NAMES, counters, strict=True)))
