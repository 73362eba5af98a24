import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.cloud_node import FedAvg, FedAvgAggregator
from fedmq.codec import ALIGN
from fedmq.workloads import (
    TrainConfig,
    build_model,
    get_flat,
    load_dataset,
    train_local,
)

pytestmark = pytest.mark.unit


def test_weighted_mean_of_deltas_by_hand() -> None:
    base = np.zeros(2 * ALIGN, dtype=np.float32)
    agg = FedAvgAggregator(base)
    agg.add("a", 0, np.full(2 * ALIGN, 1.0, dtype=np.float32), weight=1)
    agg.add("b", 0, np.full(2 * ALIGN, 4.0, dtype=np.float32), weight=3)
    np.testing.assert_allclose(agg.result(), 13 / 4)


def test_a_lost_slice_keeps_the_weights_of_those_that_arrived() -> None:
    base = np.ones(2 * ALIGN, dtype=np.float32)
    agg = FedAvgAggregator(base)
    agg.add("a", 0, np.full(2 * ALIGN, 2.0, dtype=np.float32), weight=1)
    agg.add("b", 0, np.full(ALIGN, 4.0, dtype=np.float32), weight=1)  # b's second slice lost
    result = agg.result()
    np.testing.assert_allclose(result[:ALIGN], 1 + 3.0)
    np.testing.assert_allclose(result[ALIGN:], 1 + 2.0)


def test_untouched_slices_keep_the_global_model() -> None:
    base = np.arange(3 * ALIGN, dtype=np.float32)
    agg = FedAvgAggregator(base)
    agg.add("a", ALIGN, np.ones(ALIGN, dtype=np.float32), weight=5)
    result = agg.result()
    np.testing.assert_array_equal(result[:ALIGN], base[:ALIGN])
    np.testing.assert_array_equal(result[2 * ALIGN :], base[2 * ALIGN :])
    np.testing.assert_allclose(result[ALIGN : 2 * ALIGN], base[ALIGN : 2 * ALIGN] + 1)


def test_rejects_misaligned_or_overlong_slices() -> None:
    agg = FedAvgAggregator(np.zeros(ALIGN, dtype=np.float32))
    with pytest.raises(ValueError):
        agg.add("a", 1, np.ones(3, dtype=np.float32), weight=1)
    with pytest.raises(ValueError):
        agg.add("a", 0, np.ones(ALIGN + 1, dtype=np.float32), weight=1)
    with pytest.raises(ValueError):
        agg.add("a", 0, np.ones(ALIGN, dtype=np.float32), weight=0)


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(5)))
def test_arrival_order_does_not_change_the_model(order: list[int]) -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=4 * ALIGN).astype(np.float32)
    deltas = [rng.normal(0, 1e-2, size=base.size).astype(np.float32) for _ in range(5)]
    weights = [17, 3, 101, 44, 9]
    reference = FedAvgAggregator(base)
    for i in range(5):
        reference.add(str(i), 0, deltas[i], weights[i])
    shuffled = FedAvgAggregator(base)
    for i in order:
        shuffled.add(str(i), 0, deltas[i], weights[i])
    np.testing.assert_array_equal(reference.result(), shuffled.result())


def test_one_client_full_participation_equals_local_training() -> None:
    """FedAvg over one client is plain local training on the same data in the same order."""
    train, _ = load_dataset("digits", seed=0)
    data = train.subset(np.arange(200))
    model = build_model("mlp", num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=0)
    flat = get_flat(model)
    cfg = TrainConfig(local_epochs=1, batch_size=16, lr=0.1)
    for rnd in range(3):
        local = train_local("mlp", flat, data, cfg, seed=rnd).flat
        agg = FedAvgAggregator(flat)
        delta = local - flat
        # each round moves the model by far more than the tolerance below, so matching local
        # training within it is not the trivial match of two unmoved models
        assert np.abs(delta).max() > 1000 * 1e-6
        for off in range(0, delta.size, 4 * ALIGN):  # streamed in chunks, as on the wire
            agg.add("only", off, delta[off : off + 4 * ALIGN], weight=len(data))
        flat_next = agg.result()
        np.testing.assert_allclose(flat_next, local, rtol=0, atol=1e-6)
        flat = flat_next
    # and the trained model really moved
    assert not np.allclose(flat, get_flat(model))


def test_selection_is_seeded_sorted_and_respects_minimum() -> None:
    online = [f"edge-{i}" for i in range(10)]
    s = FedAvg(fraction=0.3, min_clients=4)
    a = s.select(1, online, np.random.default_rng(7))
    b = s.select(1, list(reversed(online)), np.random.default_rng(7))
    assert a == b and len(a) == 4 and list(a) == sorted(a)
    assert FedAvg(fraction=1.0).select(1, online, np.random.default_rng(0)) == tuple(sorted(online))
    assert FedAvg(min_clients=20).select(1, online[:3], np.random.default_rng(0)) == tuple(
        online[:3]
    )
    with pytest.raises(ValueError):
        FedAvg(fraction=0)
