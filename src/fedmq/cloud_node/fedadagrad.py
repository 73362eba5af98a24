"""FedAdagrad (Reddi et al. 2021): v sums every round's squared delta, so steps only shrink.

Second moment: v <- v + delta^2. The rest is `AdaptiveOptimizer`.

Default server lr 0.1, higher than Adam's because v only grows: on digits (bench/server_opt.py,
30 rounds, seeds 0-2) it scores like FedAvg with "mlp" and "cnn"; lr 0.03 loses 2-3 points
with "mlp".
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
