"""Local SGD training, evaluation and the centralized baseline, all seeded and thread-safe.

Nothing here touches torch's global state: no global RNG, no thread settings. Grad mode is set with
context managers, which are per thread. Results are bit-identical for the same inputs and seed
under the same torch intra-op thread count (set that once per process, see `accel`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from fedmq.errors import ConfigError
from fedmq.workloads.data import Dataset
from fedmq.workloads.models import build_model, get_flat, make_model, set_flat


@dataclass(frozen=True)
class TrainConfig:
    """SGD on cross-entropy, run by each client every round.

    Defaults from bench/tune_defaults.py: digits, 10 clients, dirichlet:0.5, 30 FedAvg rounds give
    0.958-0.978 held-out accuracy with "mlp" over seeds 0-9, and 0.975-0.986 with "cnn" (seeds
    0-2). lr 0.1 scores about the same on "mlp" but diverges when "cnn" is trained centrally.
    """

    local_epochs: int = 5  # passes over the local data per round
    batch_size: int = 32  # samples per SGD step; the last batch of an epoch may be smaller
    lr: float = 0.05  # SGD learning rate
    momentum: float = 0.9  # SGD momentum; the buffer starts from zero on every call
    weight_decay: float = 0.0  # L2 penalty added by SGD
    # FedProx (Li et al. 2020): adds (mu/2) ||w - w_global||^2 to the local loss so clients with
    # skewed data drift less from the global model. 0 is plain FedAvg training, bit for bit; a
    # negative mu would push clients away from the global model. Ignored by train_centralized,
    # which has no global model to stay near.
    prox_mu: float = 0.0
    # Partial training: only these parameters (names as in `layout`) change; () trains all.
    # A device that cannot afford backpropagation through the whole model trains its head.
    trainable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.local_epochs < 1:
            raise ConfigError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.prox_mu) and self.prox_mu >= 0):
            raise ConfigError(f"prox_mu must be >= 0, got {self.prox_mu}")


@dataclass(frozen=True, eq=False)  # eq=False: holds a numpy array
class TrainResult:
    """The trained parameters and what happened while training them."""

    flat: np.ndarray  # float32 (P,) new parameters, layout order
    num_samples: int  # local training samples (the FedAvg weight)
    loss: float  # mean train cross-entropy over the last epoch (before each step's update)
    accuracy: float  # train accuracy over the last epoch, same convention
    seconds: float  # wall time of the call
    steps: int  # SGD steps taken


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers, e.g. derive_seed(run_seed, round, client_index)."""
    if any(p < 0 for p in parts):
        raise ConfigError(f"seed parts must be >= 0, got {parts}")
    state = np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def _model_for(name: str, data: Dataset) -> nn.Module:
    return make_model(
        name,
        num_features=data.num_features,
        num_classes=data.num_classes,
        feature_shape=data.feature_shape,
    )


def _tensors(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    if len(data) == 0:
        raise ConfigError(f"dataset {data.name!r} is empty")
    # torch.tensor copies: the dataset's arrays are read-only and may be shared between threads.
    return torch.tensor(data.x), torch.tensor(data.y)


def proximal_term(
    params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx's (mu/2) * ||w - w0||^2 over all parameters; its gradient is mu * (w - w0)."""
    total = torch.zeros(())
    for p, a in zip(params, anchor, strict=True):
        total = total + (p - a).pow(2).sum()
    return (mu / 2) * total


def _sgd(
    model: nn.Module, data: Dataset, cfg: TrainConfig, epochs: int, seed: int, prox_mu: float = 0.0
) -> tuple[float, float, int]:
    """Train in place; returns (loss, accuracy) of the last epoch and the number of steps.

    With `prox_mu` > 0 the loss stepped on gains FedProx's proximal term around the starting
    parameters; the loss reported is still the cross-entropy alone.
    """
    x, y = _tensors(data)
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    if cfg.trainable:
        names = {name for name, _ in model.named_parameters()}
        if missing := set(cfg.trainable) - names:
            raise ConfigError(f"trainable parameters {sorted(missing)} are not in the model")
        for name, p in model.named_parameters():
            p.requires_grad_(name in cfg.trainable)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    params = list(model.parameters())
    anchor = [p.detach().clone() for p in params] if prox_mu > 0 else []
    model.train()
    steps = 0
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    with torch.enable_grad():
        for _ in range(epochs):
            loss_sum.zero_()
            correct.zero_()
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                xb, yb = x[idx], y[idx]  # (B, F), (B,)
                logits = model(xb)  # (B, classes)
                loss = functional.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                if anchor:
                    objective = loss + proximal_term(params, anchor, prox_mu)
                    objective.backward()  # type: ignore[no-untyped-call]
                else:  # mu = 0: the very same graph as before FedProx existed
                    loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                steps += 1
                with torch.no_grad():
                    loss_sum += loss.detach().double() * len(idx)
                    correct += (logits.argmax(1) == yb).sum()
    return float(loss_sum) / n, int(correct) / n, steps


def train_local(
    model_name: str, global_flat: np.ndarray, data: Dataset, cfg: TrainConfig, *, seed: int
) -> TrainResult:
    """Start from `global_flat`, run `cfg.local_epochs` of SGD over `data`, shuffled by `seed`
    (with FedProx's proximal term around `global_flat` when `cfg.prox_mu` > 0)."""
    t0 = time.perf_counter()
    model = _model_for(model_name, data)
    set_flat(model, global_flat)
    loss, acc, steps = _sgd(model, data, cfg, cfg.local_epochs, seed, cfg.prox_mu)
    return TrainResult(
        flat=get_flat(model),
        num_samples=len(data),
        loss=loss,
        accuracy=acc,
        seconds=time.perf_counter() - t0,
        steps=steps,
    )


def evaluate(
    model_name: str, flat: np.ndarray, data: Dataset, *, batch_size: int = 4096
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the parameters `flat` on `data`."""
    model = _model_for(model_name, data)
    set_flat(model, flat)
    x, y = _tensors(data)
    model.eval()
    loss_sum = 0.0
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(y), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits = model(xb)
            loss_sum += float(functional.cross_entropy(logits, yb, reduction="sum").double())
            correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


def train_centralized(
    model_name: str,
    train: Dataset,
    test: Dataset,
    cfg: TrainConfig,
    *,
    epochs: int,
    seed: int,
) -> tuple[TrainResult, float]:
    """The same SGD on the pooled data, from `build_model(seed)`; (result, test accuracy)."""
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    t0 = time.perf_counter()
    model = build_model(
        model_name,
        num_features=train.num_features,
        num_classes=train.num_classes,
        feature_shape=train.feature_shape,
        seed=seed,
    )
    loss, acc, steps = _sgd(model, train, cfg, epochs, derive_seed(seed))
    result = TrainResult(get_flat(model), len(train), loss, acc, time.perf_counter() - t0, steps)
    _, test_acc = evaluate(model_name, result.flat, test)
    return result, test_acc
