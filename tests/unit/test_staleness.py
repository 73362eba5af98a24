"""Staleness weights: the FedAsync / FedBuff formulas, by hand, and the spec grammar."""

from __future__ import annotations

import itertools
import math

import pytest

from fedmq.cloud_node import Staleness
from fedmq.errors import ConfigError

pytestmark = pytest.mark.unit


def test_constant() -> None:
    s = Staleness.parse("constant")
    assert [s.weight(t) for t in (0, 1, 100)] == [1.0, 1.0, 1.0]


def test_poly_default_is_inverse_square_root() -> None:
    s = Staleness.parse("poly")
    assert s == Staleness(kind="poly", a=0.5)
    assert s.weight(0) == 1.0
    assert s.weight(3) == pytest.approx(0.5)  # 1 / sqrt(4)
    assert s.weight(8) == pytest.approx(1 / 3)  # 1 / sqrt(9)


def test_poly_with_exponent() -> None:
    s = Staleness.parse("poly:2")
    assert s.weight(1) == pytest.approx(0.25)  # 1 / 2^2
    assert s.weight(4) == pytest.approx(0.04)  # 1 / 5^2
    assert Staleness.parse("poly:0").weight(7) == 1.0


def test_hinge_forgives_b_then_decays() -> None:
    s = Staleness.parse("hinge:2:3")
    assert [s.weight(t) for t in (0, 1, 3)] == [1.0, 1.0, 1.0]
    assert s.weight(4) == pytest.approx(1 / 3)  # 1 / (2 * 1 + 1)
    assert s.weight(6) == pytest.approx(1 / 7)  # 1 / (2 * 3 + 1)
    default = Staleness.parse("hinge")
    assert (default.a, default.b) == (10.0, 4.0)
    assert default.weight(4) == 1.0 and default.weight(5) == pytest.approx(1 / 11)


def test_exp() -> None:
    s = Staleness.parse("exp:0.25")
    assert s.weight(0) == 1.0
    assert s.weight(4) == pytest.approx(math.exp(-1.0))
    assert Staleness.parse("exp").weight(2) == pytest.approx(math.exp(-1.0))  # default a = 0.5


@pytest.mark.parametrize("spec", ["poly:0.5", "hinge:10:4", "exp:0.5", "constant", "POLY:1"])
def test_weights_lie_in_zero_one_and_never_grow(spec: str) -> None:
    s = Staleness.parse(spec)
    weights = [s.weight(t) for t in range(50)]
    assert weights[0] == 1.0
    assert all(0 < w <= 1 for w in weights)
    assert all(b <= a for a, b in itertools.pairwise(weights))


def test_str_round_trips() -> None:
    for spec in ("constant", "poly:0.5", "hinge:10:4", "exp:0.25"):
        assert str(Staleness.parse(spec)) == spec
        assert Staleness.parse(str(Staleness.parse(spec))) == Staleness.parse(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "linear",
        "poly:",
        "poly:x",
        "poly:-1",
        "poly:1:2",
        "hinge:1",
        "hinge:1:2:3",
        "hinge:-1:2",
        "exp:nan",
        "exp:inf",
        "constant:1",
    ],
)
def test_bad_specs_name_the_grammar(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"poly\[:a\], hinge\[:a:b\] or exp\[:a\]"):
        Staleness.parse(spec)


def test_negative_staleness_is_a_bug() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Staleness.parse("poly").weight(-1)
