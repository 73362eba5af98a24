"""build_model / layout / get_flat / set_flat."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.errors import ConfigError
from fedmq.workloads import MODEL_NAMES, build_model, get_flat, layout, num_params, set_flat

pytestmark = pytest.mark.unit


def _digits_model(name: str, seed: int) -> torch.nn.Module:
    return build_model(name, num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=seed)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_on_flat_input(name: str) -> None:
    model = _digits_model(name, 0)
    out = model(torch.zeros(5, 64))
    assert out.shape == (5, 10)


def test_mlp_architecture() -> None:
    model = _digits_model("mlp", 0)
    assert layout(model) == (
        ("fc1.weight", (128, 64)),
        ("fc1.bias", (128,)),
        ("fc2.weight", (10, 128)),
        ("fc2.bias", (10,)),
    )


def test_cnn_architecture() -> None:
    model = _digits_model("cnn", 0)
    shapes = dict(layout(model))
    assert shapes["conv1.weight"] == (16, 1, 3, 3)
    assert shapes["conv2.weight"] == (32, 16, 3, 3)
    assert shapes["fc1.weight"] == (64, 32 * 4 * 4)
    assert shapes["fc2.weight"] == (10, 64)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layout_matches_state_dict(name: str) -> None:
    model = _digits_model(name, 0)
    sd = model.state_dict()
    assert [k for k, _ in layout(model)] == list(sd)
    assert [s for _, s in layout(model)] == [tuple(v.shape) for v in sd.values()]
    flat = get_flat(model)
    assert flat.dtype == np.float32 and flat.ndim == 1
    assert flat.size == num_params(model) == sum(v.numel() for v in sd.values())
    # flat order is state_dict order
    assert np.array_equal(flat, np.concatenate([v.numpy().ravel() for v in sd.values()]))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_seeded_init(name: str) -> None:
    state = torch.random.get_rng_state()
    a = get_flat(_digits_model(name, 1))
    b = get_flat(_digits_model(name, 1))
    c = get_flat(_digits_model(name, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.isfinite(a)) and 0 < np.abs(a).max() < 1.0
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(MODEL_NAMES), seed=st.integers(0, 2**32))
def test_flat_round_trip(name: str, seed: int) -> None:
    model = _digits_model(name, 0)
    rng = np.random.default_rng(seed)
    flat = rng.standard_normal(num_params(model)).astype(np.float32)
    set_flat(model, flat)
    assert np.array_equal(get_flat(model), flat)
    other = _digits_model(name, 5)
    set_flat(other, get_flat(model))
    x = torch.from_numpy(rng.random((3, 64), dtype=np.float32))
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_get_flat_is_a_copy_and_set_flat_does_not_alias() -> None:
    model = _digits_model("mlp", 0)
    flat = get_flat(model)
    flat[:] = 0
    assert np.abs(get_flat(model)).max() > 0
    src = np.ones(num_params(model), dtype=np.float32)
    set_flat(model, src)
    src[:] = 7
    assert np.all(get_flat(model) == 1)


def test_set_flat_rejects_wrong_size() -> None:
    model = _digits_model("mlp", 0)
    n = num_params(model)
    for bad in (np.zeros(n - 1, np.float32), np.zeros(n + 1, np.float32), np.zeros((1, n))):
        with pytest.raises(ConfigError):
            set_flat(model, bad)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        set_flat(model, get_flat(_digits_model("cnn", 0)))


def test_unknown_model_and_bad_shape() -> None:
    with pytest.raises(ConfigError, match="mlp"):
        _digits_model("resnet", 0)
    with pytest.raises(ConfigError):
        build_model("cnn", seed=0, num_features=64, num_classes=10, feature_shape=(64,))
    with pytest.raises(ConfigError):
        build_model("cnn", seed=0, num_features=64, num_classes=10, feature_shape=(1, 4, 4))


def test_sizes_follow_arguments() -> None:
    model = build_model("mlp", seed=0, num_features=20, num_classes=3, feature_shape=(20,))
    assert layout(model)[0] == ("fc1.weight", (128, 20))
    assert model(torch.zeros(2, 20)).shape == (2, 3)
    cnn = build_model("cnn", seed=0, num_features=3 * 28 * 28, num_classes=5,
                      feature_shape=(3, 28, 28))  # fmt: skip
    assert cnn(torch.zeros(2, 3 * 28 * 28)).shape == (2, 5)
