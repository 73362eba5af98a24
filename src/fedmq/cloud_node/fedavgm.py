"""FedAvgM (Hsu et al. 2019): server momentum on the aggregated client change.

    v <- beta * v + delta          (v starts at 0)
    x <- x + lr * v

beta=0 with lr=1 is FedAvg. In steady state the step is lr / (1 - beta) times the delta, so a
larger beta wants a smaller lr. The default lr 0.1 with beta 0.9 keeps that factor at 1, FedAvg's
step: on digits (bench/server_opt.py, 30 rounds) it scores like FedAvg with "mlp" and "cnn",
while lr 1 (a factor of 10) diverges to chance with "cnn".
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedmq.cloud_node.serveropt import F64, as_pair, check_beta, check_lr, restore


class FedAvgM:
    name = "fedavgm"

    def __init__(self, *, lr: float = 0.1, beta: float = 0.9) -> None:
        check_lr(lr)
        check_beta("beta", beta)
        self.lr = lr
        self.beta = beta
        self._step = 0
        self._v: F64 | None = None

    def step(self, global_flat: np.ndarray, delta: np.ndarray) -> np.ndarray:
        g, d = as_pair(global_flat, delta)
        if self._v is None:
            self._v = np.zeros_like(d)
        elif self._v.shape != d.shape:
            raise ValueError(f"delta shape {d.shape} does not match the state's {self._v.shape}")
        self._v *= self.beta
        self._v += d
        self._step += 1
        return (g + self.lr * self._v).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"step": np.array(self._step, dtype=np.int64)}
        if self._v is not None:
            out["v"] = self._v.copy()
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self._step, vectors = restore(state, ("v",))
        self._v = vectors.get("v")
