"""Server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization"), and the strategy
that puts one behind any other strategy's aggregate.

A round's aggregate is read as a pseudo-gradient: `delta = aggregate - global`, the mean change
the clients propose. A `ServerOptimizer` turns it into the next global model with state kept
across rounds (momentum, second moments). `ServerSGD(lr=1)` is FedAvg exactly; `FedAvgM`,
`FedAdagrad`, `FedAdam` and `FedYogi` live in their own files.

State is float64. Deltas on our digits workload span 1e-6 to 1e-1 per coordinate, so the
(1 - beta2) * delta^2 terms folded into v run from about 1e-14 up, against a v that starts at
tau^2 = 1e-6 and, for Adagrad, only grows: float32 (relative precision 6e-8) would round the
small ones away. Memory is one or two float64 vectors of the model's size. The returned model is
float32, like every aggregator's result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedmq.cloud_node.strategy import Aggregator, Strategy

F64 = npt.NDArray[np.float64]


class ServerOptimizer(Protocol):
    @property
    def name(self) -> str:
        """Short name for logs and run records, e.g. "fedadam"."""

    def step(self, global_flat: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The next global model (float32, shape of `global_flat`) from the aggregated client
        change `delta`; updates the optimizer's state."""

    def state(self) -> dict[str, np.ndarray]:
        """The optimizer's state for a checkpoint: arrays only, scalars as 0-d arrays."""

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what `state()` returned; the next `step` continues as if never stopped."""


def check_lr(lr: float) -> None:
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"server lr must be a positive number, got {lr}")


def check_beta(label: str, beta: float) -> None:
    if not (math.isfinite(beta) and 0.0 <= beta < 1.0):
        raise ValueError(f"{label} must be in [0, 1), got {beta}")


def as_pair(global_flat: np.ndarray, delta: np.ndarray) -> tuple[F64, F64]:
    """Both inputs in float64, checked before any state changes: same shape, finite delta."""
    g = np.asarray(global_flat, dtype=np.float64)
    d = np.asarray(delta, dtype=np.float64)
    if g.shape != d.shape:
        raise ValueError(f"delta shape {d.shape} does not match the model's {g.shape}")
    if not np.isfinite(d).all():
        # one NaN would poison momentum and second moments for every later round
        raise ValueError("delta has NaN or Inf")
    return g, d


def restore(state: Mapping[str, np.ndarray], vectors: Sequence[str]) -> tuple[int, dict[str, F64]]:
    """(step, {name: float64 copy}) from a `state()` dict holding "step" and either every one of
    `vectors` (same shape, finite) or none of them (saved before the first step)."""
    if "step" not in state:
        raise ValueError("optimizer state has no 'step'")
    raw = np.asarray(state["step"])
    if raw.shape != () or raw.dtype.kind not in "iu" or int(raw) < 0:
        raise ValueError(f"optimizer state 'step' must be a 0-d integer >= 0, got {raw!r}")
    present = [k for k in vectors if k in state]
    if not present:
        return int(raw), {}
    if len(present) != len(vectors):
        raise ValueError(f"optimizer state needs all of {list(vectors)}, got {sorted(state)}")
    out = {k: np.array(state[k], dtype=np.float64) for k in vectors}  # copies
    shapes = {a.shape for a in out.values()}
    if len(shapes) != 1 or not all(np.isfinite(a).all() for a in out.values()):
        raise ValueError(f"optimizer state {list(vectors)} must be finite and of one shape")
    return int(raw), out


class ServerSGD:
    """x <- x + lr * delta. With lr=1 the new model is the aggregate itself: plain FedAvg."""

    def __init__(self, *, lr: float = 1.0, name: str = "serversgd") -> None:
        check_lr(lr)
        self.lr = lr
        self.name = name
        self._step = 0

    def step(self, global_flat: np.ndarray, delta: np.ndarray) -> np.ndarray:
        g, d = as_pair(global_flat, delta)
        self._step += 1
        return (g + self.lr * d).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"step": np.array(self._step, dtype=np.int64)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self._step, _ = restore(state, ())


class AdaptiveOptimizer:
    """The shared half of FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021, Algorithm 2):

        m <- beta1 * m + (1 - beta1) * delta            (m starts at 0)
        v <- second_moment(v, delta^2)                  (v starts at tau^2, as in the paper)
        x <- x + lr * m / (sqrt(v) + tau)

    No bias correction, as in the paper. Subclasses define only `second_moment`.
    """

    name = "adaptive"

    def __init__(self, *, lr: float, beta1: float, tau: float) -> None:
        check_lr(lr)
        check_beta("beta1", beta1)
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a positive number, got {tau}")
        self.lr = lr
        self.beta1 = beta1
        self.tau = tau
        self._step = 0
        self._m: F64 | None = None
        self._v: F64 | None = None

    def second_moment(self, v: F64, d2: F64) -> F64:
        """The new v from the old one and delta^2 (may update `v` in place and return it)."""
        raise NotImplementedError

    def step(self, global_flat: np.ndarray, delta: np.ndarray) -> np.ndarray:
        g, d = as_pair(global_flat, delta)
        if self._m is None or self._v is None:
            self._m = np.zeros_like(d)
            self._v = np.full_like(d, self.tau**2)
        elif self._m.shape != d.shape:
            raise ValueError(f"delta shape {d.shape} does not match the state's {self._m.shape}")
        self._m *= self.beta1
        self._m += (1.0 - self.beta1) * d
        self._v = self.second_moment(self._v, d * d)
        self._step += 1
        return (g + self.lr * self._m / (np.sqrt(self._v) + self.tau)).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"step": np.array(self._step, dtype=np.int64)}
        if self._m is not None and self._v is not None:
            out |= {"m": self._m.copy(), "v": self._v.copy()}
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        step, vectors = restore(state, ("m", "v"))
        if vectors and not (vectors["v"] >= 0).all():
            raise ValueError("optimizer state 'v' must be >= 0")
        self._step = step
        self._m, self._v = vectors.get("m"), vectors.get("v")


class ServerOptAggregator:
    """Forwards slices to the base aggregator; `result()` steps the optimizer once.

    The first `result()` is cached and returned by later calls, so reading the result twice
    does not move the model twice. `inner` is the base aggregator (a robust one keeps its
    `used` / `rejected` / `incomplete` there).
    """

    def __init__(
        self, inner: Aggregator, global_flat: np.ndarray, optimizer: ServerOptimizer
    ) -> None:
        self.inner = inner
        self._global = np.asarray(global_flat, dtype=np.float32)
        self._optimizer = optimizer
        self._result: np.ndarray | None = None

    def add(self, client: str, offset: int, values: np.ndarray, weight: float) -> None:
        self.inner.add(client, offset, values, weight)

    def result(self) -> np.ndarray:
        if self._result is None:
            base = np.asarray(self.inner.result(), dtype=np.float64)
            delta = base - self._global.astype(np.float64)
            self._result = self._optimizer.step(self._global, delta)
        return self._result.copy()


@dataclass(frozen=True, kw_only=True, eq=False)  # eq=False: the optimizer has mutable state
class ServerOptStrategy:
    """Selects as `base` does and puts `optimizer` behind base's aggregate (FedAvg or robust).

    Named after the optimizer ("fedadam") over FedAvg, "median+fedadam" over anything else.
    A round whose aggregate is the global model unchanged (a robust rule that rejected every
    delta) still steps with a zero delta, so momentum keeps moving the model; a round that
    misses its quorum never calls `result()` and leaves the optimizer alone.
    """

    base: Strategy
    optimizer: ServerOptimizer
    name: str = field(init=False)

    def __post_init__(self) -> None:
        base, opt = self.base.name, self.optimizer.name
        object.__setattr__(self, "name", opt if base == "fedavg" else f"{base}+{opt}")

    def select(
        self, round: int, online: Sequence[str], rng: np.random.Generator
    ) -> tuple[str, ...]:
        return self.base.select(round, online, rng)

    def aggregator(self, round: int, global_flat: np.ndarray) -> ServerOptAggregator:
        inner = self.base.aggregator(round, global_flat)
        return ServerOptAggregator(inner, global_flat, self.optimizer)
