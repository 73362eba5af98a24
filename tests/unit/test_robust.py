import math

import numpy as np
import pytest

from fedmq.cloud_node import FedAvg, RoundTracker, Strategy, Verdict
from fedmq.cloud_node.robust import (
    Krum,
    Median,
    NormClip,
    RobustAggregator,
    TrimmedMean,
    krum_scores,
)
from fedmq.codec import ALIGN, CodecSpec, Limits, TensorChunk, decode, split_vector

pytestmark = pytest.mark.unit

N = 2 * ALIGN + 5  # a model whose last block is short


def vec(*head: float, size: int = N) -> np.ndarray:
    """A float32 delta whose first coordinates are `head`, the rest zero."""
    out = np.zeros(size, dtype=np.float32)
    out[: len(head)] = head
    return out


def aggregate(
    strategy: Strategy, deltas: dict[str, np.ndarray], weights: dict[str, float] | None = None
) -> np.ndarray:
    """New model from a zero global model, each delta fed whole as the cloud would."""
    agg = strategy.aggregator(1, np.zeros(next(iter(deltas.values())).size, dtype=np.float32))
    for name, delta in deltas.items():
        agg.add(name, 0, delta, (weights or {}).get(name, 1.0))
    return agg.result()


# --- the published rules, by hand -------------------------------------------------------------


def test_median_of_three_known_vectors() -> None:
    out = aggregate(Median(), {"a": vec(1, 10, -1), "b": vec(2, -5, 0), "c": vec(100, 0, 3)})
    np.testing.assert_array_equal(out, vec(2, 0, 0))
    assert out.dtype == np.float32


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    deltas = {"a": vec(1), "b": vec(2), "c": vec(4), "d": vec(100)}
    np.testing.assert_array_equal(aggregate(Median(), deltas), vec(3))


def test_median_ignores_claimed_sample_counts() -> None:
    deltas = {"a": vec(1), "b": vec(2), "c": vec(100)}
    out = aggregate(Median(), deltas, {"c": 1e6})  # c claims a million samples
    np.testing.assert_array_equal(out, vec(2))


def test_trimmed_mean_by_hand() -> None:
    # 5 clients, trim 0.2: drop 1 at each end of every coordinate, average the middle 3
    deltas = {
        "a": vec(1, -50),
        "b": vec(2, 0),
        "c": vec(3, 1),
        "d": vec(4, 2),
        "e": vec(100, 3),
    }
    np.testing.assert_allclose(aggregate(TrimmedMean(trim=0.2), deltas), vec(3, 1))
    # trim 0.1 of 5 clients drops floor(0.5) = 0: the plain (unweighted) mean
    np.testing.assert_allclose(
        aggregate(TrimmedMean(trim=0.1), deltas, {"e": 7}), vec(22, -44 / 5), rtol=1e-6
    )


def test_trimmed_mean_rejects_a_trim_that_leaves_nothing() -> None:
    with pytest.raises(ValueError):
        TrimmedMean(trim=0.5)


KRUM_POINTS = {"a": 8.0, "b": 9.0, "c": 7.0, "d": 11.0, "e": 100.0, "f": -100.0}


def test_krum_scores_by_hand() -> None:
    # n=6, f=2: each score sums the squared distances to the n-f-2 = 2 nearest others
    deltas = [vec(x) for x in KRUM_POINTS.values()]
    expected = [1 + 1, 1 + 4, 1 + 4, 4 + 9, 89**2 + 91**2, 107**2 + 108**2]
    np.testing.assert_allclose(krum_scores(deltas, f=2), expected)


def test_krum_picks_the_obvious_honest_vector() -> None:
    deltas = {k: vec(x, 0.5) for k, x in KRUM_POINTS.items()}
    np.testing.assert_array_equal(aggregate(Krum(f=2), deltas), vec(8, 0.5))


def test_multi_krum_averages_the_m_best_sample_weighted() -> None:
    deltas = {k: vec(x) for k, x in KRUM_POINTS.items()}
    weights = {"a": 1, "b": 2, "c": 3, "d": 100, "e": 1000, "f": 1000}
    # best three scores: a (2), b (5), c (5); weighted mean (8*1 + 9*2 + 7*3) / 6
    out = aggregate(Krum(f=2, multi=3), deltas, weights)
    np.testing.assert_allclose(out, vec(47 / 6), rtol=1e-6)


def test_krum_with_too_few_clients_for_f_still_picks_one() -> None:
    # n - f - 2 < 1: each score is the distance to the single nearest other
    deltas = {"a": vec(0), "b": vec(1), "c": vec(3)}
    np.testing.assert_allclose(krum_scores(list(deltas.values()), f=5), [1, 1, 4])
    np.testing.assert_array_equal(aggregate(Krum(f=5), deltas), vec(0))


def test_fixed_norm_clip_by_hand() -> None:
    deltas = {"a": vec(3, 4), "b": vec(6, 8), "c": vec(0, 1)}  # norms 5, 10, 1
    weights = {"a": 1, "b": 1, "c": 2}
    # b is clipped to (3, 4); weighted mean ((3+3+0)/4, (4+4+2)/4)
    expected = vec(1.5, 2.5)
    np.testing.assert_allclose(aggregate(NormClip(max_norm=5), deltas, weights), expected)
    # adaptive: the bound is the median norm, 5 here, so the same
    np.testing.assert_allclose(aggregate(NormClip(), deltas, weights), expected)
    # a bound of 1: a -> (0.6, 0.8), b -> (0.6, 0.8), c unchanged; ((0.6+0.6)/4, (0.8+0.8+2)/4)
    np.testing.assert_allclose(
        aggregate(NormClip(max_norm=1), deltas, weights), vec(0.3, 0.9), rtol=1e-6
    )


# --- the Byzantine property -------------------------------------------------------------------


def test_twenty_percent_sign_flipped_scaled_updates() -> None:
    """2 of 10 clients send -10x their honest delta: FedAvg is dragged past zero, the robust
    rules stay near the honest mean."""
    rng = np.random.default_rng(0)
    size = 4 * ALIGN
    mu = rng.normal(0, 1, size).astype(np.float32)
    honest = {f"c{i}": (mu + rng.normal(0, 0.3, size)).astype(np.float32) for i in range(10)}
    weights = {k: float(rng.integers(50, 250)) for k in honest}
    sent = dict(honest)
    for k in ("c3", "c7"):
        sent[k] = -10 * honest[k]
    honest_mean = np.average(
        np.stack(list(honest.values())), axis=0, weights=list(weights.values())
    )
    scale = float(np.linalg.norm(honest_mean))

    def error(strategy: Strategy) -> float:
        return float(np.linalg.norm(aggregate(strategy, sent, weights) - honest_mean)) / scale

    assert error(FedAvg()) > 2.0
    for strategy in (Median(), TrimmedMean(trim=0.2), Krum(f=2, multi=6), Krum(f=2)):
        assert error(strategy) < 0.4, strategy.name
    # clipping bounds the attackers' pull instead of removing it: about 1 - 2*2/10 of the mean
    assert error(NormClip()) < 0.5
    assert error(NormClip()) < error(FedAvg()) / 4


# --- the aggregator: buffering, completeness, screening ---------------------------------------


def test_slices_are_buffered_into_the_same_result_as_whole_deltas() -> None:
    rng = np.random.default_rng(1)
    deltas = {c: rng.normal(size=N).astype(np.float32) for c in "abcde"}
    whole = aggregate(TrimmedMean(), deltas)
    agg = TrimmedMean().aggregator(1, np.zeros(N, dtype=np.float32))
    for start in (2 * ALIGN, 0, ALIGN):  # any order, last (short) block included
        for c, d in deltas.items():
            agg.add(c, start, d[start : start + ALIGN], 3.0)
    np.testing.assert_array_equal(agg.result(), whole)


def test_incomplete_clients_are_dropped() -> None:
    agg = Median().aggregator(1, np.ones(N, dtype=np.float32))
    agg.add("a", 0, vec(1), 1)
    agg.add("b", 0, vec(3), 1)
    agg.add("c", 0, vec(1000)[: 2 * ALIGN], 1)  # the last block never arrives
    np.testing.assert_array_equal(agg.result(), 1 + vec(2))
    assert agg.incomplete == ("c",)
    assert agg.used == ("a", "b")


def test_global_model_is_added_to_the_aggregate_delta() -> None:
    base = np.arange(N, dtype=np.float32)
    agg = Median().aggregator(1, base)
    for c in "abc":
        agg.add(c, 0, np.full(N, 0.5, dtype=np.float32), 1)
    np.testing.assert_array_equal(agg.result(), base + 0.5)


def test_nan_inf_and_absurd_norms_are_rejected_and_counted() -> None:
    honest = {c: vec(1.0 + i / 10) for i, c in enumerate("abcdef")}
    bad = {
        "nan": vec(1, math.nan),
        "inf": vec(-math.inf),
        "huge": vec(2e6),  # over reject_norm = 1e6
        "big": vec(500),  # under 1e6 but > 100x the median norm (1.3)
    }
    # trim 0 is the plain mean: any leak of a bad delta would show
    agg2 = TrimmedMean(trim=0.0).aggregator(1, np.zeros(N, dtype=np.float32))
    for c, d in {**honest, **bad}.items():
        agg2.add(c, 0, d, 1)
    out = agg2.result()
    np.testing.assert_allclose(out, vec(1.25), rtol=1e-6)
    assert sorted(agg2.rejected) == sorted(bad)
    assert "NaN" in agg2.rejected["nan"] and "NaN" in agg2.rejected["inf"]
    assert "100 x median" in agg2.rejected["big"]
    assert agg2.used == tuple(sorted(honest))


def test_with_nothing_usable_the_global_model_is_kept() -> None:
    base = np.full(N, 7.0, dtype=np.float32)
    for strategy in (Median(), TrimmedMean(), Krum(), NormClip()):
        agg = strategy.aggregator(1, base)
        np.testing.assert_array_equal(agg.result(), base)  # nobody at all
        agg.add("a", 0, vec(math.nan), 1)
        np.testing.assert_array_equal(agg.result(), base)
        assert len(agg.rejected) == 1


def test_all_zero_deltas_skip_the_ratio_test() -> None:
    agg = Median().aggregator(1, np.zeros(N, dtype=np.float32))
    for c in "ab":
        agg.add(c, 0, vec(), 1)
    agg.add("c", 0, vec(1), 1)
    agg.result()
    assert agg.rejected == {}


def test_bad_slices_raise_like_fedavg() -> None:
    agg = RobustAggregator(np.zeros(N, np.float32), Median().combine)
    with pytest.raises(ValueError):
        agg.add("a", 1, np.ones(ALIGN, np.float32), 1)  # misaligned offset
    with pytest.raises(ValueError):
        agg.add("a", 0, np.ones(N + 1, np.float32), 1)  # past the end
    with pytest.raises(ValueError):
        agg.add("a", 0, np.ones(ALIGN + 1, np.float32), 1)  # ends mid-block, not at the end
    with pytest.raises(ValueError):
        agg.add("a", 0, np.ones(ALIGN, np.float32), 0)  # no weight
    with pytest.raises(ValueError):
        agg.add("a", 0, np.ones(ALIGN, np.float32), math.inf)


def test_a_block_sent_twice_keeps_the_later_values() -> None:
    agg = Median().aggregator(1, np.zeros(N, dtype=np.float32))
    agg.add("a", 0, np.full(N, 1.0, np.float32), 1)
    agg.add("a", 0, np.full(ALIGN, 2.0, np.float32), 1)
    out = agg.result()
    np.testing.assert_array_equal(out[:ALIGN], 2.0)
    np.testing.assert_array_equal(out[ALIGN:], 1.0)


def test_result_can_be_called_again() -> None:
    agg = Krum(f=0, multi=2).aggregator(1, np.zeros(N, dtype=np.float32))
    for c, x in (("a", 1.0), ("b", 2.0), ("c", 50.0)):
        agg.add(c, 0, vec(x), 1)
    first = agg.result()
    np.testing.assert_array_equal(agg.result(), first)
    np.testing.assert_allclose(first, vec(1.5))


# --- the Strategy contract --------------------------------------------------------------------


def test_select_is_fedavg_select() -> None:
    online = [f"e{i}" for i in range(10)]
    for strategy in (
        Median(fraction=0.3),
        TrimmedMean(fraction=0.3),
        Krum(fraction=0.3),
        NormClip(fraction=0.3),
    ):
        got = strategy.select(4, online, np.random.default_rng(5))
        assert got == FedAvg(fraction=0.3).select(4, online, np.random.default_rng(5))
        assert len(got) == 3


def test_names_and_validation() -> None:
    names = {s.name for s in (Median(), TrimmedMean(), Krum(), NormClip(), FedAvg())}
    assert len(names) == 5
    for bad in (
        lambda: Median(fraction=0),
        lambda: Median(min_clients=0),
        lambda: Median(reject_ratio=0.5),
        lambda: Krum(f=-1),
        lambda: Krum(multi=0),
        lambda: NormClip(max_norm=0),
    ):
        with pytest.raises(ValueError):
            bad()


def test_round_tracker_feeds_real_chunks_to_a_robust_aggregator() -> None:
    """The whole path the cloud runs: split, decode, offer; the robust rule sees full deltas."""
    total = 3 * ALIGN + 10
    base = np.zeros(total, dtype=np.float32)
    rng = np.random.default_rng(2)
    deltas = {c: rng.normal(size=total).astype(np.float32) for c in ("e0", "e1", "e2")}
    tracker = RoundTracker(
        job="j",
        round=1,
        version=0,
        total=total,
        selected=tuple(deltas),
        aggregator=Median().aggregator(1, base),
        limits=Limits(),
    )
    for sender, delta in deltas.items():
        payloads = split_vector(
            delta,
            CodecSpec.parse("fp32"),
            max_payload=3107 + 64 * 4,  # two ALIGN blocks per chunk: several chunks
            job="j",
            sender=sender,
            role="update",
            round=1,
            version=0,
            num_samples=10,
        )
        assert len(payloads) > 1
        for payload in reversed(payloads):
            assert tracker.offer(decode(payload, expect=TensorChunk), sender) is Verdict.ACCEPTED
    assert tracker.done
    np.testing.assert_array_equal(
        tracker.aggregator.result(), np.median(np.stack(list(deltas.values())), axis=0)
    )
