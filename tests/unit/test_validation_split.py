"""The validation split tuning scripts score on: part of the training data, never the test set."""

from __future__ import annotations

import numpy as np
import pytest

from fedmq.errors import ConfigError
from fedmq.workloads import Dataset, load_dataset
from fedmq.workloads.data import split_validation

pytestmark = pytest.mark.unit


def rows(d: Dataset) -> set[bytes]:
    return {r.tobytes() for r in d.x}


def test_validation_comes_from_training_data_and_never_from_the_test_set() -> None:
    train, test = load_dataset("digits", seed=3)
    fit, val = split_validation(train, 0.2, seed=3)
    assert len(fit) + len(val) == len(train)
    assert rows(val) <= rows(train) and not rows(val) & rows(test)
    assert not rows(fit) & rows(val)
    # stratified: each class gives round(n_c * 0.2) samples
    for c in range(10):
        n = int((train.y == c).sum())
        assert int((val.y == c).sum()) == round(n * 0.2)


def test_validation_split_is_fixed_by_the_seed() -> None:
    train, _ = load_dataset("digits", seed=0)
    a = split_validation(train, 0.2, seed=0)[1]
    b = split_validation(train, 0.2, seed=0)[1]
    c = split_validation(train, 0.2, seed=1)[1]
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)
    with pytest.raises(ConfigError):
        split_validation(train, 0.0, seed=0)
