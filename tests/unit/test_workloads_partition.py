"""partition / PartitionSpec: disjoint + covering, seeded, skew, shards, min_samples, parsing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.errors import ConfigError
from fedmq.workloads import PartitionSpec, partition

pytestmark = pytest.mark.unit

LABELS = np.repeat(np.arange(10), 150)  # 1500 samples, 10 balanced classes


def _assert_disjoint_covering(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert allidx.dtype == np.int64
    assert len(allidx) == n
    assert np.array_equal(np.sort(allidx), np.arange(n))


def _labels_per_client(parts: list[np.ndarray], labels: np.ndarray) -> list[int]:
    return [len(np.unique(labels[p])) for p in parts]


def _mean_tv_from_global(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance of client label histograms from the global one."""
    k = labels.max() + 1
    glob = np.bincount(labels, minlength=k) / len(labels)
    tv = [0.5 * np.abs(np.bincount(labels[p], minlength=k) / len(p) - glob).sum() for p in parts]
    return float(np.mean(tv))


@settings(max_examples=40, deadline=None)
@given(
    n_classes=st.integers(2, 10),
    per_class=st.integers(10, 60),
    clients=st.integers(1, 8),
    spec=st.sampled_from(["iid", "dirichlet:0.3", "dirichlet:5", "shards:1", "shards:3"]),
    seed=st.integers(0, 2**31),
)
def test_disjoint_covering_and_min_samples(
    n_classes: int, per_class: int, clients: int, spec: str, seed: int
) -> None:
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))
    try:
        parts = partition(labels, clients, PartitionSpec.parse(spec), seed=seed, min_samples=4)
    except ConfigError:
        # Dirichlet may give up (tiny alpha, many clients); any scheme refuses the impossible
        smallest_shard_client = 4  # shards: k shards of floor(n / (clients * k)) samples each
        if spec.startswith("shards"):
            k = int(spec.split(":")[1])
            smallest_shard_client = len(labels) // (clients * k) * k
        assert (
            spec.startswith("dirichlet") or clients * 4 > len(labels) or smallest_shard_client < 4
        )
        return
    assert len(parts) == clients
    _assert_disjoint_covering(parts, len(labels))
    assert min(len(p) for p in parts) >= 4
    for p in parts:
        assert np.all(np.diff(p) > 0)  # sorted, no repeats


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "shards:2"])
def test_seeded_reproducible(spec: str) -> None:
    s = PartitionSpec.parse(spec)
    a = partition(LABELS, 10, s, seed=11)
    b = partition(LABELS, 10, s, seed=11)
    c = partition(LABELS, 10, s, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_small_alpha_is_skewed_vs_iid() -> None:
    iid = partition(LABELS, 10, PartitionSpec("iid"), seed=0)
    skew = partition(LABELS, 10, PartitionSpec("dirichlet", alpha=0.1), seed=0)
    mild = partition(LABELS, 10, PartitionSpec("dirichlet", alpha=100.0), seed=0)
    tv_iid = _mean_tv_from_global(iid, LABELS)
    tv_skew = _mean_tv_from_global(skew, LABELS)
    tv_mild = _mean_tv_from_global(mild, LABELS)
    assert tv_iid < 0.1
    assert tv_mild < 0.15
    assert tv_skew > 0.5
    assert np.mean(_labels_per_client(skew, LABELS)) < 6  # iid clients see all 10 labels
    assert _labels_per_client(iid, LABELS) == [10] * 10


def test_iid_sizes_balanced() -> None:
    parts = partition(LABELS, 7, PartitionSpec("iid"), seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("per_client", [1, 2])
def test_shards_give_few_labels(per_client: int) -> None:
    parts = partition(LABELS, 10, PartitionSpec("shards", shards_per_client=per_client), seed=3)
    _assert_disjoint_covering(parts, len(LABELS))
    # a shard is 1500 / (10 * per_client) samples, inside one class or across one boundary
    assert max(_labels_per_client(parts, LABELS)) <= 2 * per_client
    assert all(len(p) == 150 for p in parts)


def test_min_samples_forces_resampling() -> None:
    labels = np.repeat(np.arange(10), 60)
    spec = PartitionSpec("dirichlet", alpha=0.3)
    first_draw = partition(labels, 20, spec, seed=0, min_samples=0)  # accepted as drawn
    assert min(len(p) for p in first_draw) < 10
    parts = partition(labels, 20, spec, seed=0, min_samples=10)
    assert min(len(p) for p in parts) >= 10
    _assert_disjoint_covering(parts, len(labels))


def test_impossible_requests_raise() -> None:
    labels = np.repeat(np.arange(10), 5)  # 50 samples
    with pytest.raises(ConfigError):
        partition(labels, 10, PartitionSpec("iid"), seed=0, min_samples=6)
    with pytest.raises(ConfigError):
        partition(labels, 0, PartitionSpec("iid"), seed=0)
    with pytest.raises(ConfigError):
        partition(labels, 10, PartitionSpec("shards", shards_per_client=6), seed=0, min_samples=1)
    with pytest.raises(ConfigError, match="alpha"):
        # 40 samples of 2 labels, 5 clients of >= 8 each: needs an exact 8/8/8/8/8 split
        two = np.repeat([0, 1], 20)
        partition(two, 5, PartitionSpec("dirichlet", alpha=0.05), seed=0, min_samples=8)


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("iid", PartitionSpec("iid"), "iid"),
        ("dirichlet", PartitionSpec("dirichlet", alpha=0.5), "dirichlet:0.5"),
        ("dirichlet:0.1", PartitionSpec("dirichlet", alpha=0.1), "dirichlet:0.1"),
        (" Dirichlet : 2 ", PartitionSpec("dirichlet", alpha=2.0), "dirichlet:2"),
        ("shards", PartitionSpec("shards", shards_per_client=2), "shards:2"),
        ("shards:3", PartitionSpec("shards", shards_per_client=3), "shards:3"),
    ],
)
def test_parse_and_str(text: str, expected: PartitionSpec, canonical: str) -> None:
    spec = PartitionSpec.parse(text)
    assert spec == expected
    assert str(spec) == canonical
    assert PartitionSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    ["", "zipf", "iid:3", "dirichlet:", "dirichlet:abc", "dirichlet:0", "dirichlet:-1",
     "dirichlet:nan", "shards:0", "shards:1.5", "shards:x"],
)  # fmt: skip
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        PartitionSpec.parse(text)


@given(alpha=st.floats(1e-3, 1e3), shards=st.integers(1, 50))
def test_str_round_trips(alpha: float, shards: int) -> None:
    for spec in (PartitionSpec("dirichlet", alpha=alpha), PartitionSpec("shards", shards, shards)):
        parsed = PartitionSpec.parse(str(spec))
        assert parsed.scheme == spec.scheme
        if spec.scheme == "dirichlet":
            assert parsed.alpha == pytest.approx(spec.alpha, rel=1e-5)
        else:
            assert parsed.shards_per_client == spec.shards_per_client
