"""Split sample indices across clients: iid, Dirichlet label skew, or label shards."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from fedmq.errors import ConfigError

SCHEMES = ("iid", "dirichlet", "shards")
_MAX_DIRICHLET_DRAWS = 1000
_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class PartitionSpec:
    """How to split: "iid", "dirichlet[:alpha]" (alpha 0.5) or "shards[:per_client]" (2)."""

    scheme: str
    alpha: float = 0.5  # Dirichlet concentration; small = few labels per client
    shards_per_client: int = 2  # label-sorted shards dealt to each client

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(
                f"unknown partition scheme {self.scheme!r}; valid: {', '.join(SCHEMES)}"
            )
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"dirichlet alpha must be a positive number, got {self.alpha}")
        if self.shards_per_client < 1:
            raise ConfigError(f"shards_per_client must be >= 1, got {self.shards_per_client}")

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        scheme, sep, arg = (part.strip() for part in text.strip().partition(":"))
        scheme = scheme.lower()
        if sep and not arg:
            raise ConfigError(f"partition {text!r}: missing value after ':'")
        if scheme == "iid" and not sep:
            return cls("iid")
        if scheme == "dirichlet":
            return cls("dirichlet", alpha=_number(text, arg, float)) if sep else cls("dirichlet")
        if scheme == "shards":
            return (
                cls("shards", shards_per_client=_number(text, arg, int)) if sep else cls("shards")
            )
        raise ConfigError(
            f"bad partition {text!r}; expected iid, dirichlet[:alpha] or shards[:per_client]"
        )

    def __str__(self) -> str:
        if self.scheme == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.scheme == "shards":
            return f"shards:{self.shards_per_client}"
        return self.scheme


def _number(text: str, arg: str, conv: Callable[[str], _N]) -> _N:
    try:
        return conv(arg)
    except ValueError as exc:
        raise ConfigError(f"partition {text!r}: {arg!r} is not a valid number here") from exc


def partition(
    labels: np.ndarray, clients: int, spec: PartitionSpec, *, seed: int, min_samples: int = 8
) -> list[np.ndarray]:
    """One sorted int64 index array per client; disjoint, together covering every sample."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {labels.shape}")
    n = len(labels)
    if clients < 1:
        raise ConfigError(f"clients must be >= 1, got {clients}")
    if min_samples < 0:
        raise ConfigError(f"min_samples must be >= 0, got {min_samples}")
    if n < clients * max(min_samples, 1):
        raise ConfigError(
            f"{n} samples cannot give {clients} clients at least {max(min_samples, 1)} each"
        )
    rng = np.random.default_rng(seed)
    if spec.scheme == "iid":
        parts = np.array_split(rng.permutation(n), clients)
    elif spec.scheme == "dirichlet":
        parts = _dirichlet(labels, clients, spec.alpha, min_samples, rng)
    else:
        parts = _shards(labels, clients, spec.shards_per_client, min_samples, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    labels: np.ndarray, clients: int, alpha: float, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, split its samples across clients by proportions ~ Dir(alpha) (Hsu et al. 2019).

    The whole draw is repeated until every client holds at least `min_samples`.
    """
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(_MAX_DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for class_idx in by_class:
            idx = rng.permutation(class_idx)
            p = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for k, piece in enumerate(np.split(idx, cuts)):
                parts[k].append(piece)
        merged = [np.concatenate(p) for p in parts]
        if min(len(m) for m in merged) >= min_samples:
            return merged
    raise ConfigError(
        f"dirichlet:{alpha:g} gave a client fewer than {min_samples} samples in "
        f"{_MAX_DIRICHLET_DRAWS} draws; raise alpha, lower min_samples or use fewer clients"
    )


def _shards(
    labels: np.ndarray, clients: int, per_client: int, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label (random order within a label), cut into equal shards, deal them out."""
    n_shards = clients * per_client
    if n_shards > len(labels):
        raise ConfigError(f"{clients}x{per_client} shards is more than {len(labels)} samples")
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    shards = np.array_split(order, n_shards)
    dealt = rng.permutation(n_shards).reshape(clients, per_client)
    parts = [np.concatenate([shards[s] for s in row]) for row in dealt]
    if min(len(p) for p in parts) < min_samples:
        raise ConfigError(f"shards give a client fewer than {min_samples} samples")
    return parts
