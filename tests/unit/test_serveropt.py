"""Server optimizers against their published update rules, by hand, and the strategy wrapper."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import pytest

from fedmq.cloud_node import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    Median,
    ServerOptimizer,
    ServerOptStrategy,
    ServerSGD,
)
from fedmq.codec import ALIGN

pytestmark = pytest.mark.unit

G0 = np.array([1.0, -2.0], dtype=np.float32)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def run(opt: ServerOptimizer, deltas: list[list[float]]) -> list[np.ndarray]:
    """The model after each step, starting from G0, each step from the previous output."""
    out, x = [], G0
    for d in deltas:
        x = opt.step(x, np.array(d, dtype=np.float64))
        assert x.dtype == np.float32 and x.shape == G0.shape
        out.append(x)
    return out


def close(actual: np.ndarray, *expected: float) -> None:
    np.testing.assert_allclose(actual, np.array(expected), rtol=1e-6, atol=1e-7)


# --- the published rules, by hand -------------------------------------------------------------


def test_server_sgd_scales_the_delta() -> None:
    x1, x2 = run(ServerSGD(lr=0.5), [[4.0, -2.0], [1.0, 1.0]])
    close(x1, 1.0 + 2.0, -2.0 - 1.0)
    close(x2, 3.0 + 0.5, -3.0 + 0.5)


def test_fedavgm_by_hand() -> None:
    # v <- beta v + d; x <- x + lr v, with lr 0.5, beta 0.5
    x1, x2, x3 = run(FedAvgM(lr=0.5, beta=0.5), [[2.0, -4.0], [2.0, 0.0], [0.0, 0.0]])
    # v1 = [2, -4]
    close(x1, 1.0 + 1.0, -2.0 - 2.0)
    # v2 = [1 + 2, -2 + 0] = [3, -2]
    close(x2, 2.0 + 1.5, -4.0 - 1.0)
    # v3 = [1.5, -1]: momentum keeps moving the model with a zero delta
    close(x3, 3.5 + 0.75, -5.0 - 0.5)


def test_fedavgm_with_zero_beta_and_unit_lr_is_fedavg() -> None:
    x1, x2 = run(FedAvgM(lr=1.0, beta=0.0), [[0.25, 0.5], [0.25, -0.5]])
    close(x1, 1.25, -1.5)
    close(x2, 1.5, -2.0)


def test_fedadagrad_by_hand() -> None:
    # lr 0.5, beta1 0.5, tau 1: v starts at tau^2 = 1, m at 0
    opt = FedAdagrad(lr=0.5, beta1=0.5, tau=1.0)
    x1, x2, x3 = run(opt, [[3.0, -1.0], [0.0, 1.0], [-3.0, 0.0]])
    # m1 = [1.5, -0.5], v1 = 1 + d^2 = [10, 2]
    close(x1, 1.0 + 0.5 * 1.5 / (math.sqrt(10) + 1), -2.0 + 0.5 * -0.5 / (math.sqrt(2) + 1))
    # m2 = [0.75, -0.25 + 0.5] = [0.75, 0.25], v2 = [10, 3]
    close(
        x2,
        float(x1[0]) + 0.5 * 0.75 / (math.sqrt(10) + 1),
        float(x1[1]) + 0.5 * 0.25 / (math.sqrt(3) + 1),
    )
    # m3 = [0.375 - 1.5, 0.125] = [-1.125, 0.125], v3 = [19, 3]: v never shrinks
    close(
        x3,
        float(x2[0]) + 0.5 * -1.125 / (math.sqrt(19) + 1),
        float(x2[1]) + 0.5 * 0.125 / (math.sqrt(3) + 1),
    )
    state = opt.state()
    np.testing.assert_array_equal(state["v"], [19.0, 3.0])
    np.testing.assert_array_equal(state["m"], [-1.125, 0.125])


def test_fedadam_by_hand() -> None:
    # lr 0.5, beta1 0.5, beta2 0.75, tau 1: v starts at 1; no bias correction
    opt = FedAdam(lr=0.5, beta1=0.5, beta2=0.75, tau=1.0)
    x1, x2, x3 = run(opt, [[4.0, -2.0], [0.0, 2.0], [-4.0, 0.0]])
    # m1 = [2, -1], v1 = 0.75 * 1 + 0.25 * [16, 4] = [4.75, 1.75]
    close(x1, 1.0 + 0.5 * 2 / (math.sqrt(4.75) + 1), -2.0 + 0.5 * -1 / (math.sqrt(1.75) + 1))
    # m2 = [1, -0.5 + 1] = [1, 0.5], v2 = [0.75 * 4.75, 0.75 * 1.75 + 0.25 * 4] = [3.5625, 2.3125]
    close(
        x2,
        float(x1[0]) + 0.5 * 1 / (math.sqrt(3.5625) + 1),
        float(x1[1]) + 0.5 * 0.5 / (math.sqrt(2.3125) + 1),
    )
    # m3 = [0.5 - 2, 0.25] = [-1.5, 0.25], v3 = [0.75 * 3.5625 + 4, 0.75 * 2.3125]
    close(
        x3,
        float(x2[0]) + 0.5 * -1.5 / (math.sqrt(6.671875) + 1),
        float(x2[1]) + 0.5 * 0.25 / (math.sqrt(1.734375) + 1),
    )
    np.testing.assert_array_equal(opt.state()["v"], [6.671875, 1.734375])


def test_fedyogi_by_hand() -> None:
    # lr 0.5, beta1 0.5, beta2 0.75, tau 1: v <- v - 0.25 d^2 sign(v - d^2), v starts at 1
    opt = FedYogi(lr=0.5, beta1=0.5, beta2=0.75, tau=1.0)
    x1, x2, x3 = run(opt, [[4.0, 0.5], [2.0, 0.5], [2.0, 0.0]])
    # d^2 = [16, 0.25], v - d^2 = [-15, 0.75]: v1 = [1 + 4, 1 - 0.0625] = [5, 0.9375]
    # m1 = [2, 0.25]
    close(x1, 1.0 + 0.5 * 2 / (math.sqrt(5) + 1), -2.0 + 0.5 * 0.25 / (math.sqrt(0.9375) + 1))
    # d^2 = [4, 0.25], v - d^2 = [1, 0.6875] > 0: v2 = [5 - 1, 0.9375 - 0.0625] = [4, 0.875]
    # (Adam would give 0.75 * 5 + 1 = 4.75); m2 = [1 + 1, 0.125 + 0.25] = [2, 0.375]
    close(
        x2,
        float(x1[0]) + 0.5 * 2 / (2 + 1),
        float(x1[1]) + 0.5 * 0.375 / (math.sqrt(0.875) + 1),
    )
    # d^2 = [4, 0]: v - d^2 = [0, 0.875]: sign 0 leaves v[0] at 4, and d = 0 leaves v[1]
    # m3 = [1 + 1, 0.1875]
    close(
        x3,
        float(x2[0]) + 0.5 * 2 / (2 + 1),
        float(x2[1]) + 0.5 * 0.1875 / (math.sqrt(0.875) + 1),
    )
    np.testing.assert_array_equal(opt.state()["v"], [4.0, 0.875])


@pytest.mark.parametrize("make", [FedAdagrad, FedAdam, FedYogi])
def test_second_moment_starts_at_tau_squared(make: Callable[..., ServerOptimizer]) -> None:
    # a zero delta leaves v at its start for Adagrad and Yogi and scales it by beta2 for Adam
    opt = make(lr=0.1, tau=1e-3)
    x = opt.step(G0, np.zeros(2))
    np.testing.assert_array_equal(x, G0)
    scale = 0.99 if isinstance(opt, FedAdam) else 1.0
    np.testing.assert_allclose(opt.state()["v"], [scale * 1e-6] * 2, rtol=1e-15)


def test_defaults() -> None:
    assert (ServerSGD().lr, FedAvgM().lr, FedAvgM().beta) == (1.0, 0.1, 0.9)
    for opt in (FedAdam(), FedYogi()):
        assert (opt.lr, opt.beta1, opt.beta2, opt.tau) == (0.01, 0.9, 0.99, 1e-3)
    assert (FedAdagrad().lr, FedAdagrad().beta1, FedAdagrad().tau) == (0.1, 0.9, 1e-3)
    assert [o.name for o in (FedAvgM(), FedAdam(), FedYogi(), FedAdagrad())] == [
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
    ]


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: ServerSGD(lr=0.0),
        lambda: ServerSGD(lr=float("nan")),
        lambda: FedAvgM(lr=-1.0),
        lambda: FedAvgM(beta=1.0),
        lambda: FedAvgM(beta=-0.1),
        lambda: FedAdam(beta1=1.0),
        lambda: FedAdam(beta2=1.5),
        lambda: FedAdam(tau=0.0),
        lambda: FedYogi(beta2=float("inf")),
        lambda: FedYogi(lr=float("inf")),
        lambda: FedAdagrad(tau=-1e-3),
        lambda: FedAdagrad(beta1=-0.5),
    ],
)
def test_bad_hyperparameters_are_rejected(make: Callable[[], ServerOptimizer]) -> None:
    with pytest.raises(ValueError, match=r"lr|beta|tau"):
        make()


@pytest.mark.parametrize("make", [ServerSGD, FedAvgM, FedAdam, FedYogi, FedAdagrad])
def test_bad_delta_is_rejected_and_state_kept(make: Callable[[], ServerOptimizer]) -> None:
    opt = make()
    opt.step(G0, np.array([0.1, 0.2]))
    before = opt.state()
    with pytest.raises(ValueError, match="NaN"):
        opt.step(G0, np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="shape"):
        opt.step(G0, np.zeros(3))
    after = opt.state()
    assert sorted(before) == sorted(after)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)


# --- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [ServerSGD, FedAvgM, FedAdam, FedYogi, FedAdagrad])
def test_state_round_trip_continues_identically(make: Callable[[], ServerOptimizer]) -> None:
    rng = np.random.default_rng(0)
    deltas = [rng.normal(scale=0.1, size=50) for _ in range(5)]
    x = rng.normal(size=50).astype(np.float32)
    a = make()
    for d in deltas[:2]:
        x = a.step(x, d)
    saved = a.state()
    assert int(saved["step"]) == 2 and saved["step"].shape == ()
    assert all(v.dtype == np.float64 for k, v in saved.items() if k != "step")
    buf = io.BytesIO()
    np.savez(buf, **saved)  # type: ignore[arg-type]  # arrays only: loads without pickle
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        b = make()
        b.load_state({k: npz[k] for k in npz.files})
    for key in saved:  # the saved dict is a copy, not a view of the live state
        saved[key][...] = 0
    xa = xb = x
    for d in deltas[2:]:
        xa, xb = a.step(xa, d), b.step(xb, d)
        np.testing.assert_array_equal(xa, xb)
    assert int(b.state()["step"]) == 5


@pytest.mark.parametrize("make", [FedAvgM, FedAdam])
def test_state_before_the_first_step(make: Callable[[], ServerOptimizer]) -> None:
    fresh = make().state()
    assert list(fresh) == ["step"] and int(fresh["step"]) == 0
    opt = make()
    opt.step(G0, np.ones(2))
    opt.load_state(fresh)  # back to the start
    assert list(opt.state()) == ["step"]
    a, b = make(), opt
    np.testing.assert_array_equal(a.step(G0, np.ones(2)), b.step(G0, np.ones(2)))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({}, "no 'step'"),
        ({"step": np.array(-1)}, "step"),
        ({"step": np.array([1])}, "step"),
        ({"step": np.array(1.0)}, "step"),
        ({"step": np.array(1), "m": np.zeros(2)}, "all of"),
        ({"step": np.array(1), "m": np.zeros(2), "v": np.ones(3)}, "one shape"),
        ({"step": np.array(1), "m": np.zeros(2), "v": np.array([1.0, np.inf])}, "finite"),
        ({"step": np.array(1), "m": np.zeros(2), "v": np.array([1.0, -1.0])}, ">= 0"),
    ],
)
def test_bad_state_is_rejected(state: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FedAdam().load_state(state)


# --- the strategy wrapper ----------------------------------------------------------------------

N = 2 * ALIGN + 5  # a model whose last block is short


def _clients(seed: int) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, float]]]:
    rng = np.random.default_rng(seed)
    global_flat = rng.normal(size=N).astype(np.float32)
    updates = {
        f"edge{k}": (rng.normal(scale=0.05, size=N).astype(np.float32), float(10 + 7 * k))
        for k in range(4)
    }
    return global_flat, updates


def test_server_sgd_at_unit_lr_over_fedavg_is_fedavg_exactly() -> None:
    plain_fedavg = FedAvg()
    wrapped = ServerOptStrategy(base=FedAvg(), optimizer=ServerSGD(lr=1.0))
    for seed in range(3):
        global_flat, updates = _clients(seed)
        a = plain_fedavg.aggregator(1, global_flat)
        b = wrapped.aggregator(1, global_flat)
        for k, (name, (delta, weight)) in enumerate(updates.items()):
            # slice by slice; edge0 loses its middle block, so per-block weights differ
            for offset in range(0, N, ALIGN):
                if k == 0 and offset == ALIGN:
                    continue
                piece = delta[offset : offset + ALIGN]
                a.add(name, offset, piece, weight)
                b.add(name, offset, piece, weight)
        np.testing.assert_array_equal(b.result(), a.result())


def test_wrapper_steps_once_per_round_and_caches_the_result() -> None:
    opt = FedAvgM(lr=1.0, beta=0.5)
    strategy = ServerOptStrategy(base=FedAvg(), optimizer=opt)
    assert strategy.name == "fedavgm"
    agg = strategy.aggregator(1, G0)
    agg.add("a", 0, f32(2.0, 0.0), 1.0)
    agg.add("b", 0, f32(0.0, -4.0), 3.0)
    # FedAvg delta = [2 * 1/4, -4 * 3/4] = [0.5, -3]; v1 = delta
    first = agg.result()
    close(first, 1.5, -5.0)
    np.testing.assert_array_equal(agg.result(), first)
    assert int(opt.state()["step"]) == 1
    # round 2 from the new model: delta [1, 1], v2 = 0.5 [0.5, -3] + [1, 1] = [1.25, -0.5]
    agg = strategy.aggregator(2, first)
    agg.add("a", 0, f32(1.0, 1.0), 5.0)
    close(agg.result(), 1.5 + 1.25, -5.0 - 0.5)


def test_wrapper_over_a_robust_strategy() -> None:
    opt = ServerSGD(lr=0.5, name="half")
    strategy = ServerOptStrategy(base=Median(), optimizer=opt)
    assert strategy.name == "median+half"
    agg = strategy.aggregator(1, G0)
    for name, d in {"a": (1.0, 10.0), "b": (2.0, -6.0), "c": (100.0, 0.0)}.items():
        agg.add(name, 0, f32(*d), 1.0)
    # median delta [2, 0], half of it applied
    close(agg.result(), 2.0, -2.0)
    assert agg.inner.used == ("a", "b", "c")  # type: ignore[attr-defined]


def test_wrapper_selects_like_its_base() -> None:
    base = FedAvg(fraction=0.5)
    strategy = ServerOptStrategy(base=base, optimizer=FedAdam())
    online = [f"edge{k}" for k in range(10)]
    picked = strategy.select(3, online, np.random.default_rng(7))
    assert picked == base.select(3, online, np.random.default_rng(7))
    assert len(picked) == 5
