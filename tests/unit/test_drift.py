"""Drifting / growing local data: grow is nested and ends whole, labels rotate, all seeded."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fedmq.errors import ConfigError
from fedmq.workloads import Dataset, DriftSpec, data_for_round
from fedmq.workloads.drift import window

pytestmark = pytest.mark.unit


def shard(per_class: int = 20, classes: int = 10) -> Dataset:
    """Balanced labels; x holds each sample's own index, so a subset names its samples."""
    n = per_class * classes
    y = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    return Dataset("toy", np.arange(n, dtype=np.float32).reshape(-1, 1), y, classes, (1,))


def ids(data: Dataset) -> set[int]:
    return {int(v) for v in data.x[:, 0]}


def majority(data: Dataset) -> int:
    return int(np.bincount(data.y, minlength=data.num_classes).argmax())


def test_none_returns_the_shard_itself() -> None:
    data = shard()
    for r in (1, 5, 10):
        assert data_for_round(data, DriftSpec.parse("none"), round=r, rounds=10, seed=0) is data


def test_grow_is_nested_starts_at_f_and_ends_whole() -> None:
    data = shard()  # 200 samples
    spec = DriftSpec.parse("grow:0.25")
    rounds = [data_for_round(data, spec, round=r, rounds=5, seed=3) for r in range(1, 6)]
    # k = 50; count(r) = 50 + 150 * (r - 1) // 4
    assert [len(d) for d in rounds] == [50, 87, 125, 162, 200]
    for before, after in itertools.pairwise(rounds):
        assert ids(before) < ids(after)
    assert ids(rounds[-1]) == set(range(200))
    assert np.array_equal(rounds[-1].y, data.y)  # the whole shard, in its own order


def test_grow_in_a_single_round_is_the_whole_shard() -> None:
    data = shard()
    out = data_for_round(data, DriftSpec.parse("grow:0.1"), round=1, rounds=1, seed=0)
    assert len(out) == len(data)


def test_grow_of_a_tiny_shard_starts_with_at_least_one_sample() -> None:
    data = shard(per_class=1, classes=3)
    sizes = [
        len(data_for_round(data, DriftSpec.parse("grow:0.01"), round=r, rounds=4, seed=0))
        for r in range(1, 5)
    ]
    assert sizes == [1, 1, 2, 3]


def test_labels_majority_follows_a_window_of_one_class() -> None:
    data = shard()
    spec = DriftSpec.parse("labels:0.9:1")
    for r in range(1, 13):
        out = data_for_round(data, spec, round=r, rounds=12, seed=0)
        assert len(out) == len(data)
        assert majority(out) == (r - 1) % 10
        # class weight 20 * 1 against 180 * 0.1: the window class expects 20 / 38 of the draws
        assert np.bincount(out.y, minlength=10)[(r - 1) % 10] > 0.3 * len(out)


def test_labels_default_window_moves_one_class_per_round() -> None:
    data = shard()
    spec = DriftSpec.parse("labels")
    assert (spec.p, spec.width) == (0.9, 2)
    assert window(1, 2, 10) == (0, 1) and window(10, 2, 10) == (9, 0)
    majorities = []
    for r in range(1, 11):
        out = data_for_round(data, spec, round=r, rounds=10, seed=1)
        counts = np.bincount(out.y, minlength=10)
        # weight 40 * 1 against 160 * 0.1: the two window classes expect 40 / 56 of the draws
        assert counts[list(window(r, 2, 10))].sum() > 0.5 * len(out)
        majorities.append(majority(out))
    assert len(set(majorities)) >= 5  # the majority label moves
    assert majorities[0] != majorities[2]  # disjoint windows


def test_labels_with_zero_p_is_an_unweighted_draw() -> None:
    data = shard(per_class=100)
    out = data_for_round(data, DriftSpec.parse("labels:0"), round=1, rounds=3, seed=0)
    counts = np.bincount(out.y, minlength=10)
    assert len(out) == 1000 and counts.max() < 140  # about 100 each


def test_labels_on_a_shard_without_the_window_classes_still_draws() -> None:
    data = shard().subset(np.arange(100, 200))  # classes 5..9 only
    out = data_for_round(data, DriftSpec.parse("labels:0.9"), round=1, rounds=3, seed=0)
    assert len(out) == 100 and set(out.y.tolist()) <= set(range(5, 10))


@pytest.mark.parametrize("text", ["grow:0.3", "labels:0.8:3"])
def test_deterministic_and_seeded(text: str) -> None:
    data = shard()
    spec = DriftSpec.parse(text)

    def get(r: int, seed: int) -> set[int]:
        return ids(data_for_round(data, spec, round=r, rounds=6, seed=seed))

    assert get(2, 7) == get(2, 7)
    assert get(2, 7) != get(2, 8)


def test_labels_rounds_draw_afresh() -> None:
    data = shard()
    spec = DriftSpec.parse("labels:0.5:10")  # every class in the window: only the rng differs
    a = data_for_round(data, spec, round=1, rounds=3, seed=0)
    b = data_for_round(data, spec, round=2, rounds=3, seed=0)
    assert ids(a) != ids(b)


def test_empty_shard_is_returned() -> None:
    empty = shard().subset(np.zeros(0, dtype=np.int64))
    assert data_for_round(empty, DriftSpec.parse("grow"), round=1, rounds=2, seed=0) is empty


@pytest.mark.parametrize(("r", "rounds"), [(0, 5), (6, 5), (1, 0)])
def test_round_out_of_range(r: int, rounds: int) -> None:
    with pytest.raises(ValueError, match="round"):
        data_for_round(shard(), DriftSpec.parse("grow"), round=r, rounds=rounds, seed=0)


def test_parse_and_str() -> None:
    assert DriftSpec.parse("none") == DriftSpec()
    assert DriftSpec.parse(" GROW ") == DriftSpec(kind="grow", fraction=0.5)
    assert DriftSpec.parse("grow:1") == DriftSpec(kind="grow", fraction=1.0)
    assert DriftSpec.parse("labels:0.5") == DriftSpec(kind="labels", p=0.5, width=2)
    for text in ("none", "grow:0.25", "labels:0.9:3"):
        assert str(DriftSpec.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "shift",
        "none:1",
        "grow:",
        "grow:0",
        "grow:1.5",
        "grow:x",
        "grow:0.5:1",
        "labels:1",
        "labels:-0.1",
        "labels:0.5:0",
        "labels:0.5:1.5",
        "labels:0.5:2:3",
    ],
)
def test_bad_specs_name_the_grammar(text: str) -> None:
    with pytest.raises(ConfigError, match=r"grow\[:f\] .* labels\[:p\[:w\]\]"):
        DriftSpec.parse(text)


def test_sizes_match_the_docstring_formula() -> None:
    data = shard(per_class=7, classes=3)  # n = 21
    spec = DriftSpec.parse("grow:0.3")
    k = math.ceil(0.3 * 21)
    sizes = [len(data_for_round(data, spec, round=r, rounds=4, seed=0)) for r in range(1, 5)]
    assert sizes == [k + (21 - k) * (r - 1) // 3 for r in range(1, 5)] == [7, 11, 16, 21]
