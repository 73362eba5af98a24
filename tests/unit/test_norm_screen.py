"""NormScreen: slices far above the last round's median norm are clipped, honest ones not."""

import numpy as np
import pytest

from fedmq.cloud_node.screen import NormScreen

pytestmark = pytest.mark.unit


def _round(screen: NormScreen, norms: list[float], offset: int = 0) -> list[np.ndarray]:
    out = [screen.screen(offset, np.full(4, n / 2, dtype=np.float32)) for n in norms]  # |v| = n
    screen.end_round()
    return out


def test_nothing_is_clipped_before_a_reference_exists() -> None:
    screen = NormScreen(factor=10)
    out = _round(screen, [1.0, 1e6])
    assert screen.clipped == 0 and float(np.linalg.norm(out[1])) == pytest.approx(1e6)


def test_a_slice_far_above_the_last_median_is_scaled_to_the_bound() -> None:
    screen = NormScreen(factor=10)
    _round(screen, [1.0, 2.0, 3.0])  # median 2: bound 20
    out = _round(screen, [2.5, 19.0, 1000.0])
    assert screen.clipped == 1
    assert [round(float(np.linalg.norm(v)), 4) for v in out] == [2.5, 19.0, 20.0]
    # The attacker's clipped norm is what entered the reference, not its 1000.
    assert screen.bound(0, 4) == pytest.approx(10 * 19.0)


def test_references_are_per_slice_and_need_enough_samples() -> None:
    screen = NormScreen(factor=10, min_samples=3)
    _round(screen, [1.0, 1.0, 1.0], offset=0)
    _round(screen, [1.0, 1.0], offset=64)  # two samples: no reference for this slice
    assert screen.bound(64, 4) is None and screen.bound(0, 4) == pytest.approx(10.0)
    out = _round(screen, [50.0], offset=64)
    assert screen.clipped == 0 and float(np.linalg.norm(out[0])) == pytest.approx(50.0)


def test_before_any_round_the_global_models_own_slice_is_the_reference() -> None:
    screen = NormScreen(factor=10)
    screen.begin_round(np.full(8, 0.5, dtype=np.float32))  # slice norm 1.0
    out = [screen.screen(0, np.full(4, v, dtype=np.float32)) for v in (2.0, 500.0)]
    assert screen.clipped == 1
    assert [round(float(np.linalg.norm(v)), 4) for v in out] == [4.0, 10.0]
    screen.begin_round(np.zeros(8, np.float32))  # a zero model gives no reference
    assert screen.reference(4, 4) is None
