"""FedAdagrad (Reddi et al. 2021): v sums every round's squared delta, so steps only shrink.

Second moment: v <- v + delta^2. The rest is `AdaptiveOptimizer`.
"""

from __future__ import annotations

from fedmq.cloud_node.serveropt import F64, AdaptiveOptimizer


class FedAdagrad(AdaptiveOptimizer):
    name = "fedadagrad"

    def __init__(self, *, lr: float = 0.1, beta1: float = 0.9, tau: float = 1e-3) -> None:
        super().__init__(lr=lr, beta1=beta1, tau=tau)

    def second_moment(self, v: F64, d2: F64) -> F64:
        v += d2
        return v
