"""load_dataset: split sizes, stratification, reproducibility, train/test disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from fedmq.errors import ConfigError
from fedmq.workloads import DATASET_NAMES, Dataset, load_dataset

pytestmark = pytest.mark.unit


def _rows(d: Dataset) -> set[bytes]:
    return {row.tobytes() + bytes([int(label)]) for row, label in zip(d.x, d.y, strict=True)}


def test_digits_shapes_and_ranges() -> None:
    train, test = load_dataset("digits", seed=0)
    assert len(train) + len(test) == 1797
    for d in (train, test):
        assert d.x.dtype == np.float32 and d.x.shape[1] == 64
        assert d.y.dtype == np.int64
        assert d.num_classes == 10 and d.feature_shape == (1, 8, 8)
        assert d.x.min() >= 0.0 and d.x.max() <= 1.0
    assert train.x.max() == 1.0  # scaled by 1/16, not left as 0..16


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_split_is_stratified(fraction: float) -> None:
    train, test = load_dataset(seed=3, test_fraction=fraction)
    assert len(test) == pytest.approx(1797 * fraction, abs=10)
    total = np.bincount(train.y, minlength=10) + np.bincount(test.y, minlength=10)
    # each class contributes round(n_c * fraction) samples to the test set
    assert np.array_equal(np.bincount(test.y, minlength=10), np.round(total * fraction))


def test_split_disjoint_and_covering() -> None:
    # the 1797 raw digits images (with labels) are all distinct, so rows identify samples
    train, test = load_dataset(seed=0)
    train_rows, test_rows = _rows(train), _rows(test)
    assert len(train_rows) == len(train) and len(test_rows) == len(test)
    assert not train_rows & test_rows
    assert len(train_rows | test_rows) == 1797


def test_split_reproducible_and_seed_dependent() -> None:
    a_train, a_test = load_dataset(seed=7)
    b_train, b_test = load_dataset(seed=7)
    c_train, _ = load_dataset(seed=8)
    assert np.array_equal(a_train.x, b_train.x) and np.array_equal(a_test.y, b_test.y)
    assert not np.array_equal(a_train.x, c_train.x)


def test_arrays_are_read_only_and_subset_copies() -> None:
    train, _ = load_dataset()
    with pytest.raises(ValueError):
        train.x[0, 0] = 5.0
    sub = train.subset(np.array([3, 1, 2]))
    assert len(sub) == 3 and np.array_equal(sub.y, train.y[[3, 1, 2]])
    assert sub.num_classes == train.num_classes and sub.feature_shape == train.feature_shape


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="digits"):
        load_dataset("mnist-nope")
    assert "digits" in DATASET_NAMES


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_test_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError):
        load_dataset(test_fraction=fraction)


def test_dataset_validates_itself() -> None:
    x = np.zeros((4, 64), dtype=np.float32)
    with pytest.raises(ConfigError):
        Dataset("bad", x.astype(np.float64), np.zeros(4, np.int64), 10, (1, 8, 8))
    with pytest.raises(ConfigError):
        Dataset("bad", x, np.zeros(3, np.int64), 10, (1, 8, 8))
    with pytest.raises(ConfigError):
        Dataset("bad", x, np.zeros(4, np.int64), 10, (1, 4, 4))
    with pytest.raises(ConfigError, match="labels"):
        Dataset("bad", x, np.full(4, 10, np.int64), 10, (1, 8, 8))
    ok = Dataset("ok", x, np.zeros(4, np.int64), 10, (1, 8, 8))
    assert not ok.x.flags.writeable
    x[0, 0] = 1.0  # the caller's array stays writable; the dataset holds a read-only view
