"""Small models for flat feature vectors, and their parameters as one flat float32 vector.

Models are built on the meta device and initialised with a private torch.Generator, so building
one neither reads nor advances torch's global RNG and is safe from several threads at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fedmq.errors import ConfigError

_META = torch.device("meta")


class MLP(nn.Module):
    """features -> hidden -> ReLU -> classes."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(num_features, hidden, device=_META)
        self.fc2 = nn.Linear(hidden, num_classes, device=_META)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, classes)
        out: torch.Tensor = self.fc2(torch.relu(self.fc1(x)))
        return out


class CNN(nn.Module):
    """Two 3x3 convs, a 2x2 max-pool and two linear layers; input is flat, viewed as (C, H, W)."""

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if len(feature_shape) != 3 or min(feature_shape) < 1:
            raise ConfigError(f"cnn needs a (C, H, W) feature shape, got {feature_shape}")
        c, h, w = feature_shape
        if h < 2 or w < 2:
            raise ConfigError(f"cnn needs H, W >= 2, got {feature_shape}")
        self.feature_shape = (c, h, w)
        self.conv1 = nn.Conv2d(c, 16, 3, padding=1, device=_META)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, device=_META)
        self.fc1 = nn.Linear(32 * (h // 2) * (w // 2), 64, device=_META)
        self.fc2 = nn.Linear(64, num_classes, device=_META)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C*H*W) -> (B, classes)
        x = x.view(-1, *self.feature_shape)  # (B, C, H, W)
        x = torch.relu(self.conv1(x))  # (B, 16, H, W)
        x = torch.relu(self.conv2(x))  # (B, 32, H, W)
        x = nn.functional.max_pool2d(x, 2)  # (B, 32, H/2, W/2)
        x = torch.relu(self.fc1(x.flatten(1)))  # (B, 64)
        out: torch.Tensor = self.fc2(x)
        return out


def _mlp(num_features: int, num_classes: int, feature_shape: tuple[int, ...]) -> nn.Module:
    return MLP(num_features, num_classes)


def _cnn(num_features: int, num_classes: int, feature_shape: tuple[int, ...]) -> nn.Module:
    if math.prod(feature_shape) != num_features:
        raise ConfigError(f"feature_shape {feature_shape} does not hold {num_features} features")
    return CNN(feature_shape, num_classes)


# name -> constructor on the meta device (no storage, no RNG use); adding a model is one entry.
MODELS: dict[str, Callable[[int, int, tuple[int, ...]], nn.Module]] = {"mlp": _mlp, "cnn": _cnn}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def _init_params(model: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default Linear/Conv init (kaiming_uniform a=sqrt(5), uniform bias), seeded."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
                if module.bias is not None:
                    fan_in = module.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(module.bias, -bound, bound, generator=gen)


def make_model(
    name: str, *, num_features: int, num_classes: int, feature_shape: tuple[int, ...]
) -> nn.Module:
    """The named model on the CPU with UNINITIALISED parameters: load them with `set_flat`."""
    ctor = MODELS.get(name)
    if ctor is None:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    if num_features < 1 or num_classes < 2:
        raise ConfigError(
            f"need num_features >= 1 and num_classes >= 2, got {num_features}, {num_classes}"
        )
    return ctor(num_features, num_classes, tuple(feature_shape)).to_empty(device="cpu")


def build_model(
    name: str, *, num_features: int, num_classes: int, feature_shape: tuple[int, ...], seed: int
) -> nn.Module:
    """The named model, initialised from `seed` (same seed, same weights; global RNG untouched)."""
    model = make_model(
        name, num_features=num_features, num_classes=num_classes, feature_shape=feature_shape
    )
    _init_params(model, torch.Generator().manual_seed(seed))
    return model


def _float_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]


def layout(model: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of every parameter and float buffer, in state_dict order."""
    return tuple((k, tuple(v.shape)) for k, v in _float_state(model))


def head(layout: Sequence[tuple[str, tuple[int, ...]]]) -> tuple[int, tuple[str, ...]]:
    """The last layer (the tensors of the last module, e.g. fc2.weight and fc2.bias): where it
    starts in the flat vector, and its names. Transfer learning trains only this part."""
    if not layout:
        raise ConfigError("an empty model has no head")
    module = layout[-1][0].rpartition(".")[0]
    names: list[str] = []
    for name, _ in reversed(layout):
        if name.rpartition(".")[0] != module:
            break
        names.append(name)
    names.reverse()
    start = sum(math.prod(shape) for _, shape in layout[: len(layout) - len(names)])
    return start, tuple(names)


def num_params(model: nn.Module) -> int:
    """Length of the flat vector of `model`."""
    return sum(v.numel() for _, v in _float_state(model))


def get_flat(model: nn.Module) -> np.ndarray:
    """A float32 1-D copy of the model's float state, in `layout` order."""
    parts = [v.detach().reshape(-1).to(torch.float32) for _, v in _float_state(model)]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(parts).numpy().copy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Load a flat vector (as from `get_flat`) into the model in place; ConfigError on mismatch."""
    flat = np.asarray(flat)
    state = _float_state(model)
    expected = sum(v.numel() for _, v in state)
    if flat.ndim != 1 or flat.size != expected:
        raise ConfigError(
            f"flat parameters of shape {flat.shape} do not fit this model ({expected} values)"
        )
    src = torch.from_numpy(np.array(flat, dtype=np.float32, copy=True))
    offset = 0
    with torch.no_grad():
        for _, v in state:
            n = v.numel()
            v.copy_(src[offset : offset + n].view(v.shape))
            offset += n
