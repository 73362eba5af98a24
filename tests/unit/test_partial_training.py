"""Head-only (partial) training: which parameters move, and which slice travels."""

import numpy as np
import pytest

from fedmq.cloud_node import FedAvgAggregator
from fedmq.codec import ALIGN, CodecSpec, assemble, decode, split_vector
from fedmq.errors import CodecError, ConfigError
from fedmq.workloads import (
    TrainConfig,
    build_model,
    get_flat,
    head,
    layout,
    load_dataset,
    train_local,
)

pytestmark = pytest.mark.unit


def test_head_is_the_last_layer_of_each_model() -> None:
    for name, start in (("mlp", 64 * 128 + 128), ("cnn", 38282 - 650)):
        model = build_model(name, num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=0)
        assert head(layout(model)) == (start, ("fc2.weight", "fc2.bias"))
    assert head((("w", (3,)),)) == (0, ("w",))
    with pytest.raises(ConfigError):
        head(())


def test_only_trainable_parameters_move() -> None:
    train, _ = load_dataset("digits", seed=0)
    data = train.subset(np.arange(200))
    model = build_model("mlp", num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=0)
    start, names = head(layout(model))
    base = get_flat(model)
    cfg = TrainConfig(local_epochs=1, trainable=names)
    moved = train_local("mlp", base, data, cfg, seed=1).flat - base
    assert not moved[:start].any()  # the body is frozen, bit for bit
    assert np.abs(moved[start:]).max() > 1e-3  # the head learned
    full = train_local("mlp", base, data, TrainConfig(local_epochs=1), seed=1).flat - base
    assert np.abs(full[:start]).max() > 1e-3
    with pytest.raises(ConfigError, match="not in the model"):
        train_local("mlp", base, data, TrainConfig(trainable=("nope",)), seed=1)


def test_a_slice_from_start_travels_alone_and_lands_in_place() -> None:
    values = np.arange(1000, dtype=np.float32)
    decoded = np.full(1000, 7.0, dtype=np.float32)
    payloads = split_vector(
        values, CodecSpec.parse("fp32+zstd"), max_payload=4096, job="j", sender="e",
        role="update", round=1, version=0, num_samples=5, decoded=decoded, start=640,
    )  # fmt: skip
    chunks = [decode(p) for p in payloads]
    assert chunks[0].offset == 640 and chunks[-1].offset + chunks[-1].length == 1000
    assert sum(c.length for c in chunks) == 360
    assert not decoded[:640].any() and (decoded[640:] == values[640:]).all()
    with pytest.raises(CodecError):  # a slice is not a whole vector
        assemble(chunks)
    with pytest.raises(CodecError, match="multiple of"):
        split_vector(values, CodecSpec.parse("fp32"), max_payload=4096, job="j", sender="e",
                     role="update", round=1, version=0, num_samples=1, start=10)  # fmt: skip


def test_fedavg_averages_the_body_over_full_edges_only() -> None:
    base = np.zeros(4 * ALIGN, dtype=np.float32)
    agg = FedAvgAggregator(base)
    agg.add("full", 0, np.full(4 * ALIGN, 2.0, dtype=np.float32), weight=1)
    agg.add("head", 3 * ALIGN, np.full(ALIGN, 8.0, dtype=np.float32), weight=1)
    result = agg.result()
    np.testing.assert_allclose(result[: 3 * ALIGN], 2.0)  # not diluted by the head-only edge
    np.testing.assert_allclose(result[3 * ALIGN :], 5.0)
