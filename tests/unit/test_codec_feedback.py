"""Error feedback: what a lossy codec did not deliver is carried into the next round."""

import numpy as np
import pytest

from fedmq.codec import CodecSpec, ErrorFeedback, split_vector
from fedmq.errors import CodecError

pytestmark = pytest.mark.unit

IDS = {"job": "j", "sender": "edge-1", "role": "update", "round": 1, "version": 0}


def send(values: np.ndarray, text: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """What the receiver decodes from `values` sent with `text` at 16 KiB payloads."""
    decoded = np.empty_like(values)
    split_vector(values, CodecSpec.parse(text), max_payload=16_384, decoded=decoded, rng=rng, **IDS)
    return decoded


def test_compensate_then_update_is_exactly_the_documented_arithmetic() -> None:
    ef = ErrorFeedback(4)
    delta = np.array([1.0, -2.0, 0.5, 0.0], np.float32)
    assert ef.compensate(delta).tolist() == delta.tolist()  # residual starts at 0
    ef.update(np.array([1.0, -1.0, 0.0, 0.0], np.float32))
    assert ef.residual.tolist() == [0.0, -1.0, 0.5, 0.0]
    compensated = ef.compensate(delta)
    assert compensated.tolist() == [1.0, -3.0, 1.0, 0.0]
    compensated[:] = 99.0  # the caller's copy: the pending vector is unaffected
    ef.update(np.zeros(4, np.float32))  # nothing delivered: all of it carries over
    assert ef.residual.tolist() == [1.0, -3.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "text", ["topk:0.01+int8+zstd", "topk:0.1+sign", "int4:sr+zstd", "sign+zstd", "int8:sr"]
)
def test_decoded_updates_add_up_to_the_true_ones_but_for_one_residual(text: str) -> None:
    rng = np.random.default_rng(0)
    size, rounds = 5000, 120
    ef = ErrorFeedback(size)
    true_sum = np.zeros(size, np.float64)
    sent_sum = np.zeros(size, np.float64)
    plain_sum = np.zeros(size, np.float64)
    drift = rng.normal(0, 1e-3, size)  # a consistent direction plus noise, like SGD deltas
    norms = []
    for r in range(rounds):
        delta = (drift + rng.normal(0, 1e-3, size)).astype(np.float32)
        decoded = send(ef.compensate(delta), text, np.random.default_rng(r))
        ef.update(decoded)
        true_sum += delta
        sent_sum += decoded
        plain_sum += send(delta, text, np.random.default_rng(r))
        norms.append(float(np.linalg.norm(ef.residual)))
    residual = ef.residual.astype(np.float64)
    # sum(decoded) = sum(delta) - last residual, up to float32 rounding over the rounds
    np.testing.assert_allclose(sent_sum, true_sum - residual, atol=1e-7 * rounds)
    # without feedback the error of the sum grows with the rounds; with it, it is one residual
    with_ef = np.linalg.norm(sent_sum - true_sum)
    without = np.linalg.norm(plain_sum - true_sum)
    assert with_ef < 0.5 * without
    if text in ("topk:0.1+sign", "int4:sr+zstd", "int8:sr"):  # contractive enough: it settles
        quarter = rounds // 4
        assert np.mean(norms[-quarter:]) < 1.5 * np.mean(norms[quarter : 2 * quarter])


def test_lossless_codecs_leave_no_residual() -> None:
    ef = ErrorFeedback(1000)
    delta = np.random.default_rng(1).normal(0, 1, 1000).astype(np.float32)
    ef.update(send(ef.compensate(delta), "fp32+zstd"))
    assert not ef.residual.any()
    assert not CodecSpec.parse("fp32+zstd").lossy


def test_discard_keeps_the_residual_and_reset_clears_it() -> None:
    ef = ErrorFeedback(3)
    ef.compensate(np.ones(3, np.float32))
    ef.update(np.zeros(3, np.float32))
    ef.compensate(np.full(3, 5.0, np.float32))
    ef.discard()  # the round closed before sending: this round's delta is dropped
    assert ef.residual.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(CodecError, match="compensate"):
        ef.update(np.zeros(3, np.float32))
    ef.reset()
    assert not ef.residual.any()


def test_misuse_is_refused() -> None:
    ef = ErrorFeedback(3)
    with pytest.raises(CodecError, match="compensate"):
        ef.update(np.zeros(3, np.float32))
    for bad in (np.zeros(4, np.float32), np.zeros(3, np.float64), [0.0, 0.0, 0.0]):
        with pytest.raises(CodecError, match=r"shape \(3,\)"):
            ef.compensate(bad)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="NaN or Inf"):
        ef.compensate(np.array([0, np.inf, 0], np.float32))
    ef.compensate(np.zeros(3, np.float32))
    with pytest.raises(CodecError, match="NaN or Inf"):
        ef.update(np.array([0, np.nan, 0], np.float32))
    with pytest.raises(ValueError, match="read-only"):
        ef.residual[0] = 1.0
    for size in (-1, 2.0, True):
        with pytest.raises(CodecError, match="size"):
            ErrorFeedback(size)  # type: ignore[arg-type]
