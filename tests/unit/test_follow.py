"""ModelFollower: the full model once, then deltas on exactly the version they follow."""

import numpy as np
import pytest

from fedmq.codec import CodecSpec, Limits, TensorChunk, decode, split_vector
from fedmq.errors import CodecError, ProtocolError
from fedmq.transport import ModelFollower, Step

pytestmark = pytest.mark.unit

BASE = np.linspace(-1, 1, 5000, dtype=np.float32)


def _chunks(values: np.ndarray, role: str, version: int, codec: str = "fp32") -> list[TensorChunk]:
    payloads = split_vector(
        values, CodecSpec.parse(codec), max_payload=8192, job="j", sender="cloud", role=role,
        round=version + 1, version=version,
    )  # fmt: skip
    return [decode(p) for p in payloads]


def _follower() -> ModelFollower:
    return ModelFollower(job="j", limits=Limits(), max_bytes=1 << 20, timeout_s=60)


def _feed(f: ModelFollower, chunks: list[TensorChunk], delta: bool = False) -> list[Step]:
    on = f.on_delta if delta else f.on_model
    return [on(c, 0.0) for c in chunks]


def test_full_model_then_deltas_in_order() -> None:
    f = _follower()
    steps = _feed(f, _chunks(BASE, "model", 0))
    assert steps[-1] is Step.MODEL and set(steps[:-1]) <= {Step.NONE}
    assert f.version == 0 and np.array_equal(f.model[1], BASE)  # type: ignore[index]
    change = np.full(5000, 0.25, dtype=np.float32)
    assert _feed(f, _chunks(change, "delta", 1), delta=True)[-1] is Step.APPLIED
    assert f.version == 1 and np.allclose(f.model[1], BASE + 0.25)  # type: ignore[index]
    assert (f.full_models, f.deltas_applied) == (1, 1)
    # A retained copy of the version held changes nothing.
    assert set(_feed(f, _chunks(BASE, "model", 1))) == {Step.NONE}


def test_a_delta_over_a_gap_waits_for_the_full_model() -> None:
    f = _follower()
    _feed(f, _chunks(BASE, "model", 0))
    held = f.model
    assert _feed(f, _chunks(np.ones(5000, np.float32), "delta", 2), delta=True)[-1] is Step.GAP
    assert f.gap and f.model is held  # untouched: a delta applies only to version - 1
    _feed(f, _chunks(BASE + 2, "model", 2))
    assert f.version == 2 and not f.gap


def test_wrong_roles_and_non_finite_deltas_are_refused() -> None:
    f = _follower()
    with pytest.raises(ProtocolError):
        f.on_model(_chunks(BASE, "delta", 0)[0], 0.0)
    with pytest.raises(ProtocolError):
        f.on_delta(_chunks(BASE, "model", 0)[0], 0.0)
    _feed(f, _chunks(BASE, "model", 0))
    bad = np.full(5000, np.inf, dtype=np.float32)
    with pytest.raises(CodecError, match="NaN or Inf"):
        _feed(f, _chunks(bad, "delta", 1), delta=True)
    assert f.version == 0
