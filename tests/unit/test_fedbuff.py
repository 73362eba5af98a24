"""FedBuffer: verdicts, staleness weights and the aggregate, by hand-built numbers."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fedmq.cloud_node import FedBuffConfig, FedBuffer, Offer
from fedmq.errors import ConfigError

pytestmark = pytest.mark.unit

# s(tau) = 1 / (1 + tau): weights 1, 1/2, 1/3 for tau 0, 1, 2
CFG = FedBuffConfig(buffer_size=3, max_staleness=2, staleness="poly:1", server_lr=0.5)


def v(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def filled() -> FedBuffer:
    """Two accepted updates at current version 5, one of them a version stale."""
    buf = FedBuffer(size=3, config=CFG)
    assert buf.offer("a", 5, 5, v(2, 0, -4), 10) == (Offer.ACCEPTED, 1.0)
    assert buf.offer("b", 4, 5, v(4, 4, 0), 20) == (Offer.ACCEPTED, 0.5)
    return buf


def test_verdicts_weights_and_the_aggregate_by_hand() -> None:
    buf = filled()
    assert buf.offer("c", 2, 5, v(1, 1, 1), 10) == (Offer.TOO_STALE, 0.0)  # tau 3 > 2
    assert buf.offer("d", 6, 5, v(1, 1, 1), 10) == (Offer.FUTURE, 0.0)
    assert buf.offer("a", 5, 5, v(9, 9, 9), 10) == (Offer.DUPLICATE, 0.0)
    assert buf.offer("f", 5, 5, v(1, np.nan, 1), 10) == (Offer.BAD, 0.0)
    assert buf.offer("f", 5, 5, v(1, np.inf, 1), 10) == (Offer.BAD, 0.0)
    assert buf.offer("f", 5, 5, v(1, 1), 10) == (Offer.BAD, 0.0)
    assert buf.offer("f", 5, 5, v(1, 1, 1), 0) == (Offer.BAD, 0.0)
    assert buf.offer("f", -1, 0, v(1, 1, 1), 10) == (Offer.BAD, 0.0)  # tau 1, base < 0
    assert buf.pending == 2 and not buf.ready
    # tau 2 == max_staleness: still accepted, at weight 1/3
    verdict, weight = buf.offer("e", 3, 5, v(3, 0, 3), 30)
    assert verdict is Offer.ACCEPTED and weight == pytest.approx(1 / 3)
    assert buf.ready
    # 0.5 * (1 * 10 [2, 0, -4] + 1/2 * 20 [4, 4, 0] + 1/3 * 30 [3, 0, 3]) / (10 + 20 + 30)
    # = 0.5 * ([20, 0, -40] + [40, 40, 0] + [30, 0, 30]) / 60 = 0.5 * [90, 40, -10] / 60
    out = buf.flush()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.75, 1 / 3, -1 / 12], rtol=1e-6)
    assert buf.counters.as_dict() == {
        "accepted": 3,
        "too_stale": 1,
        "future": 1,
        "duplicate": 1,
        "bad": 5,
    }


def test_flush_empties_the_buffer_but_keeps_the_counters() -> None:
    buf = filled()
    buf.flush()
    assert buf.pending == 0 and not buf.ready
    with pytest.raises(RuntimeError, match="empty"):
        buf.flush()
    # duplicates are per buffer: "a" may send for version 5 again after the flush
    assert buf.offer("a", 5, 6, v(2, 2, 2), 10) == (Offer.ACCEPTED, 0.5)
    np.testing.assert_allclose(buf.flush(), 0.5 * 0.5 * v(2, 2, 2))
    assert buf.counters.accepted == 3


def test_same_client_on_two_base_versions_is_two_updates() -> None:
    buf = FedBuffer(size=3, config=CFG)
    assert buf.offer("a", 4, 5, v(1, 0, 0), 10)[0] is Offer.ACCEPTED
    assert buf.offer("a", 5, 5, v(0, 1, 0), 10)[0] is Offer.ACCEPTED


def test_fresh_updates_at_unit_lr_are_fedavg() -> None:
    buf = FedBuffer(size=2, config=FedBuffConfig(buffer_size=2))
    buf.offer("a", 0, 0, v(1, -1), 1)
    buf.offer("b", 0, 0, v(5, 3), 3)
    # (1 [1, -1] + 3 [5, 3]) / 4
    np.testing.assert_array_equal(buf.flush(), v(4, 2))


def test_zero_max_staleness_takes_only_fresh_updates() -> None:
    buf = FedBuffer(size=1, config=FedBuffConfig(max_staleness=0))
    assert buf.offer("a", 3, 4, v(1), 1)[0] is Offer.TOO_STALE
    assert buf.offer("a", 4, 4, v(1), 1) == (Offer.ACCEPTED, 1.0)


def test_state_round_trip_continues_identically() -> None:
    a = filled()
    buf = io.BytesIO()
    np.savez(buf, **a.state())  # type: ignore[arg-type]  # numpy stubs: allow_pickle
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        b = FedBuffer(size=3, config=CFG)
        b.load_state({k: npz[k] for k in npz.files})
    assert b.pending == 2 and b.counters == a.counters
    for buffer in (a, b):
        assert buffer.offer("a", 5, 5, v(1, 1, 1), 1)[0] is Offer.DUPLICATE  # remembered
        assert buffer.offer("e", 3, 5, v(3, 0, 3), 30)[0] is Offer.ACCEPTED
    np.testing.assert_array_equal(a.flush(), b.flush())
    assert a.counters.as_dict() == b.counters.as_dict()


def test_empty_state_round_trips() -> None:
    a = FedBuffer(size=3, config=CFG)
    b = FedBuffer(size=3, config=CFG)
    b.load_state(a.state())
    assert b.pending == 0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sum", np.zeros(4)),
        ("sum", np.array([0.0, np.nan, 0.0])),
        ("bases", np.array([5], dtype=np.int64)),
        ("samples", np.array(0.0)),
        ("counters", np.array([1, 2, 3], dtype=np.int64)),
        ("counters", np.array([1, 2, 3, 4, -1], dtype=np.int64)),
    ],
)
def test_bad_state_is_rejected(key: str, value: np.ndarray) -> None:
    state = filled().state()
    state[key] = value
    with pytest.raises(ValueError, match="FedBuff state"):
        FedBuffer(size=3, config=CFG).load_state(state)
    del state[key]
    with pytest.raises(ValueError, match="lacks"):
        FedBuffer(size=3, config=CFG).load_state(state)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"buffer_size": 0},
        {"max_staleness": -1},
        {"server_lr": 0.0},
        {"server_lr": float("nan")},
        {"staleness": "linear"},
    ],
)
def test_config_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        FedBuffConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    cfg = FedBuffConfig()
    assert (cfg.buffer_size, cfg.max_staleness, cfg.staleness, cfg.server_lr) == (
        5,
        10,
        "poly:0.5",
        1.0,
    )
    with pytest.raises(ValueError, match="current_version"):
        FedBuffer(size=1, config=cfg).offer("a", 0, -1, v(1), 1)
    with pytest.raises(ValueError, match="size"):
        FedBuffer(size=0, config=cfg)


def test_a_step_applies_exactly_k_and_later_arrivals_wait_their_turn() -> None:
    """Updates accepted while the buffer is full are not folded into this step: each step's
    size is K, whatever the cloud was busy with when they came."""
    buf = filled()
    assert buf.offer("c", 5, 5, v(3, 3, 3), 10) == (Offer.ACCEPTED, 1.0)
    assert buf.ready and buf.filled == 3
    assert buf.offer("d", 5, 5, v(100, 100, 100), 10) == (Offer.ACCEPTED, 1.0)  # waits
    assert buf.offer("d", 5, 5, v(1, 1, 1), 10) == (Offer.DUPLICATE, 0.0)  # waiting counts
    assert buf.filled == 3 and buf.pending == 4 and buf.samples == 40
    # 0.5 * (10*(2,0,-4) + 0.5*20*(4,4,0) + 10*(3,3,3)) / 40: d's 100s are not in it
    np.testing.assert_allclose(buf.flush(), [1.125, 0.875, -0.125], rtol=1e-6)
    assert buf.filled == 1 and not buf.ready and buf.samples == 10
    np.testing.assert_allclose(buf.flush(), [50, 50, 50], rtol=1e-6)  # d, in the next step


def test_a_smaller_capacity_caps_the_step_and_a_checkpoint_keeps_the_waiting() -> None:
    buf = FedBuffer(size=3, config=CFG)
    for name in "abc":
        buf.offer(name, 5, 5, v(1, 2, 3), 10, capacity=2)
    assert buf.filled == 2 and buf.pending == 3
    state = buf.state()  # the waiting update is folded in, not lost
    again = FedBuffer(size=3, config=CFG)
    again.load_state(state)
    assert again.filled == 3
    np.testing.assert_allclose(again.flush(), [0.5, 1, 1.5], rtol=1e-6)
