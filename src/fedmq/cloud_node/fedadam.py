"""FedAdam (Reddi et al. 2021): v is an exponential average of squared deltas.

Second moment: v <- beta2 * v + (1 - beta2) * delta^2. The rest is `AdaptiveOptimizer`.

Defaults are the paper's beta1, beta2 and tau with server lr 0.01: on digits (bench/server_opt.py,
30 rounds, seeds 0-2) it scores like FedAvg with "mlp" and "cnn"; lr 0.1 does as well with
"mlp" but loses 4 points with "cnn" (seed 0).
"""

from __future__ import annotations

from fedmq.cloud_node.serveropt import F64, AdaptiveOptimizer, check_beta


class FedAdam(AdaptiveOptimizer):
    name = "fedadam"

    def __init__(
        self, *, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(lr=lr, beta1=beta1, tau=tau)
        check_beta("beta2", beta2)
        self.beta2 = beta2

    def second_moment(self, v: F64, d2: F64) -> F64:
        v *= self.beta2
        v += (1.0 - self.beta2) * d2
        return v
