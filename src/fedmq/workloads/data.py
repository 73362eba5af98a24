"""Datasets as plain numpy arrays, with a fixed, seeded, stratified held-out split, and an
optional validation split carved from the training part for tuning (never from the test set)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedmq.errors import ConfigError


def _readonly(a: np.ndarray) -> np.ndarray:
    view = a.view()  # the caller's own array keeps its flags
    view.setflags(write=False)
    return view


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays do not compare to a bool
class Dataset:
    """Samples as a float32 matrix (N, features) and int64 labels (N,); arrays are read-only."""

    name: str
    x: np.ndarray  # float32 (N, F), F == prod(feature_shape)
    y: np.ndarray  # int64 (N,), values in [0, num_classes)
    num_classes: int
    feature_shape: tuple[int, ...]  # the per-sample view a model may reshape to, e.g. (1, 8, 8)

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.x.dtype != np.float32:
            raise ConfigError(f"x must be float32 (N, F), got {self.x.dtype} {self.x.shape}")
        if self.y.ndim != 1 or self.y.dtype != np.int64 or len(self.y) != len(self.x):
            raise ConfigError(f"y must be int64 (N,) with N={len(self.x)}, got {self.y.shape}")
        if math.prod(self.feature_shape) != self.x.shape[1]:
            raise ConfigError(
                f"feature_shape {self.feature_shape} does not match {self.x.shape[1]}"
            )
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.y) and not (self.y.min() >= 0 and self.y.max() < self.num_classes):
            raise ConfigError(f"labels must lie in [0, {self.num_classes})")
        # frozen dataclass: set the read-only views through object.__setattr__
        object.__setattr__(self, "x", _readonly(self.x))
        object.__setattr__(self, "y", _readonly(self.y))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    def subset(self, idx: np.ndarray) -> Dataset:
        """The samples at `idx` (a copy), same metadata."""
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(self.name, self.x[idx], self.y[idx], self.num_classes, self.feature_shape)


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) index arrays; each class gives round(n_c * test_fraction) to test."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = round(len(idx) * test_fraction)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits  # ships with scikit-learn, no download

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset("digits", x, y, num_classes=10, feature_shape=(1, 8, 8))


# name -> loader of the full dataset; adding a dataset is one entry here.
DATASETS: dict[str, Callable[[], Dataset]] = {
    "digits": _load_digits,
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def load_dataset(
    name: str = "digits", *, seed: int = 0, test_fraction: float = 0.2
) -> tuple[Dataset, Dataset]:
    """(train, held-out test): a stratified split of the named dataset, fixed by `seed`."""
    loader = DATASETS.get(name)
    if loader is None:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_NAMES)}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    full = loader()
    train_idx, test_idx = stratified_split(full.y, test_fraction, seed)
    return full.subset(train_idx), full.subset(test_idx)


def split_validation(train: Dataset, val_fraction: float, *, seed: int) -> tuple[Dataset, Dataset]:
    """(train minus validation, validation): a stratified share of `train`, fixed by `seed`.

    Tuning scripts score settings on the validation part and leave the test set for reporting,
    so a default is never chosen on the split its figure is quoted on. Carve it before
    partitioning: the edges then never see the validation samples. The seed is offset from the
    held-out split's, so the two draws are not the same permutation.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    keep, val = stratified_split(train.y, val_fraction, seed + 1_000_003)
    return train.subset(keep), train.subset(val)
