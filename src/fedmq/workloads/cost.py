"""What training a model costs, counted once per model: FLOPs and activation memory per sample."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedmq.workloads.models import build_model


@dataclass(frozen=True)
class TrainingCost:
    params: int
    flops_per_sample: float  # forward + backward, as torch's FlopCounterMode counts them
    activations_per_sample: int  # float elements of every module output in one forward pass

    def memory_bytes(self, batch_size: int, *, momentum: bool = True) -> int:
        """Bytes to train on a device: weights, grads, momentum, the global copy, activations."""
        copies = 4 if momentum else 3
        return 4 * (copies * self.params + 2 * batch_size * self.activations_per_sample)


@functools.lru_cache(maxsize=32)
def training_cost(
    model_name: str, num_features: int, num_classes: int, feature_shape: tuple[int, ...]
) -> TrainingCost:
    model = build_model(
        model_name,
        num_features=num_features,
        num_classes=num_classes,
        feature_shape=feature_shape,
        seed=0,
    )
    batch = 8
    x = torch.zeros(batch, num_features)
    y = torch.zeros(batch, dtype=torch.long)
    outputs = [0]

    def count(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            outputs[0] += out.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with FlopCounterMode(display=False) as counter:
            loss = nn.functional.cross_entropy(model(x), y)
            torch.autograd.backward(loss)
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return TrainingCost(params, counter.get_total_flops() / batch, outputs[0] // batch)
