"""FedYogi (Reddi et al. 2021; Zaheer et al. 2018): v moves toward delta^2 by a step that does
not scale with v, so it grows more slowly than Adam's when a large delta arrives.

Second moment: v <- v - (1 - beta2) * delta^2 * sign(v - delta^2). The rest is
`AdaptiveOptimizer`.

Defaults as FedAdam's, for the same reason: server lr 0.01 scores like FedAvg on digits with
"mlp" and "cnn" (bench/server_opt.py), lr 0.1 drops 7 points with "cnn".
"""

from __future__ import annotations

import numpy as np

from fedmq.cloud_node.serveropt import F64, AdaptiveOptimizer, check_beta


class FedYogi(AdaptiveOptimizer):
    name = "fedyogi"

    def __init__(
        self, *, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(lr=lr, beta1=beta1, tau=tau)
        check_beta("beta2", beta2)
        self.beta2 = beta2

    def second_moment(self, v: F64, d2: F64) -> F64:
        v -= (1.0 - self.beta2) * d2 * np.sign(v - d2)
        return v
