"""What training a model costs, counted once per model: FLOPs and activation memory per sample,
and how fast this host trains it (measured, for the CLI to cache)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedmq.workloads.data import Dataset
from fedmq.workloads.models import build_model, get_flat
from fedmq.workloads.train import TrainConfig, train_local


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


def measure_training_speed(
    model_name: str, data: Dataset, *, batch_size: int, samples: int = 512, repeats: int = 3
) -> float:
    """This host's training speed on `model_name`, in FLOP/s: the best of `repeats` epochs.

    The best, not the mean, because the figure bounds what emulation can show (a device faster
    than the host cannot be emulated); a busy moment only ever makes an epoch slower. Measured
    once per machine and cached by the CLI (`fedmq.cli.hostspeed`): a run's estimate must not
    depend on how busy the host was when it was made.
    """
    part = data.subset(np.arange(min(samples, len(data))))
    cost = training_cost(model_name, data.x.shape[1], data.num_classes, data.feature_shape)
    flat = get_flat(
        build_model(
            model_name,
            num_features=data.x.shape[1],
            num_classes=data.num_classes,
            feature_shape=data.feature_shape,
            seed=0,
        )
    )
    cfg = TrainConfig(local_epochs=1, batch_size=batch_size)
    train_local(model_name, flat, part, cfg, seed=0)  # warm-up: allocator, kernels
    best = min(train_local(model_name, flat, part, cfg, seed=0).seconds for _ in range(repeats))
    return cost.flops_per_sample * len(part) / max(best, 1e-9)
