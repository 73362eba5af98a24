"""RoundTracker: every verdict and every check by hand-built chunks, and what reaches the sum.

Each check here was planted as a bug (deleted or negated in rounds.py) and at least one test
below failed; docs/reliability.md lists which catches which.
"""

import dataclasses
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmq.cloud_node import FedAvgAggregator, RoundTracker, Verdict
from fedmq.codec import ALIGN, Limits, TensorChunk, sign
from fedmq.codec.chunking import digest

pytestmark = pytest.mark.unit

A = ALIGN
TOTAL = 4 * A  # four blocks; the aggregator weighs each block by who sent it
SELECTED = ("edge-0", "edge-1", "edge-2")
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


class Recorder(FedAvgAggregator):
    """FedAvg that also remembers every slice folded in: what reached the aggregate."""

    def __init__(self, global_flat: np.ndarray) -> None:
        super().__init__(global_flat)
        self.added: list[tuple[str, int, int]] = []

    def add(self, client: str, offset: int, values: np.ndarray, weight: float) -> None:
        super().add(client, offset, values, weight)
        self.added.append((client, offset, values.size))


def chunk(
    sender: str = "edge-0",
    index: int = 0,
    count: int = 1,
    offset: int = 0,
    length: int | None = None,
    value: float = 1.0,
    **kw: Any,
) -> TensorChunk:
    """One fp32 update chunk with a valid digest; `length` defaults to the rest of the vector."""
    total = kw.pop("total", TOTAL)
    length = total - offset if length is None else length
    data = np.full(length, value, dtype=np.float32).tobytes()
    fields: dict[str, Any] = {
        "job": "j", "sender": sender, "role": "update", "round": 5, "version": 4,
        "index": index, "count": count, "total": total, "offset": offset, "length": length,
        "encoding": "fp32", "scale": 1.0, "num_samples": 10, "metrics": {},
        "digest": digest(data), "data": data,
    }  # fmt: skip
    fields.update(kw)
    return TensorChunk(**fields)


def tracker(**kw: Any) -> RoundTracker:
    args: dict[str, Any] = {
        "job": "j", "round": 5, "version": 4, "total": TOTAL, "selected": SELECTED,
        "aggregator": Recorder(np.zeros(TOTAL, np.float32)), "limits": Limits(),
    }  # fmt: skip
    args.update(kw)
    return RoundTracker(**args)


def added(t: RoundTracker) -> list[tuple[str, int, int]]:
    assert isinstance(t.aggregator, Recorder)
    return t.aggregator.added


def offer_own(t: RoundTracker, c: TensorChunk) -> Verdict:
    """Offered on the sender's own topic, as an honest edge publishes."""
    return t.offer(c, c.sender)


# --- accepted updates ------------------------------------------------------------------------


def test_an_update_in_chunks_is_accepted_and_completes_its_sender() -> None:
    t = tracker()
    parts = [
        chunk(index=0, count=3, offset=0, length=A, metrics={"loss": 0.5}),
        chunk(index=1, count=3, offset=A, length=2 * A),
        chunk(index=2, count=3, offset=3 * A),  # the last chunk ends at total
    ]
    assert offer_own(t, parts[2]) is Verdict.ACCEPTED  # any arrival order
    assert not t.completed
    assert offer_own(t, parts[0]) is Verdict.ACCEPTED
    assert not t.completed
    assert offer_own(t, parts[1]) is Verdict.ACCEPTED
    assert t.completed == ("edge-0",)
    assert t.outstanding == ("edge-1", "edge-2") and not t.done
    assert t.num_samples == 10
    assert t.client_metrics() == {"edge-0": {"loss": 0.5}}
    assert t.counters.as_dict()["accepted"] == 3
    np.testing.assert_array_equal(t.aggregator.result(), np.ones(TOTAL))


def test_the_aggregate_is_the_sample_weighted_mean_and_the_round_ends_when_all_are_in() -> None:
    t = tracker()
    for sender, value, n in (("edge-0", 1.0, 1), ("edge-1", 4.0, 3), ("edge-2", 2.0, 4)):
        assert offer_own(t, chunk(sender, value=value, num_samples=n)) is Verdict.ACCEPTED
    assert t.done and t.outstanding == () and t.completed == SELECTED
    assert t.num_samples == 8
    np.testing.assert_allclose(t.aggregator.result(), (1 + 12 + 8) / 8)


def test_a_head_only_slice_above_offset_0_completes_and_weighs_only_its_blocks() -> None:
    t = tracker()
    # a head-only edge sends [2A, total) in two chunks; chunk 0 starts above offset 0
    head = [chunk("edge-1", 0, 2, 2 * A, A, 3.0), chunk("edge-1", 1, 2, 3 * A, value=3.0)]
    assert [offer_own(t, c) for c in head] == [Verdict.ACCEPTED] * 2
    assert offer_own(t, chunk("edge-2", offset=3 * A, value=5.0)) is Verdict.ACCEPTED  # 1 chunk
    assert offer_own(t, chunk("edge-0", value=1.0)) is Verdict.ACCEPTED  # the whole model
    assert t.completed == SELECTED and t.done
    result = t.aggregator.result()
    np.testing.assert_allclose(result[: 2 * A], 1.0)  # only edge-0 sent these blocks
    np.testing.assert_allclose(result[2 * A : 3 * A], 2.0)  # edge-0 and edge-1
    np.testing.assert_allclose(result[3 * A :], 3.0)  # all three


# --- tiling: each coordinate once ------------------------------------------------------------


def test_two_chunks_at_offset_0_are_malformed_before_their_values_reach_the_aggregate() -> None:
    t = tracker()
    assert offer_own(t, chunk("edge-1", 0, 3, 0, A, 2.0)) is Verdict.ACCEPTED
    assert offer_own(t, chunk("edge-1", 2, 3, 2 * A, value=2.0)) is Verdict.ACCEPTED
    # index 1 claims [0, A) again: without the check it completes edge-1, gives block 0 two
    # thirds of the weight against edge-0 and leaves block 1 without edge-1
    assert offer_own(t, chunk("edge-1", 1, 3, 0, A, 2.0)) is Verdict.MALFORMED
    assert ("edge-1", 0, A) in added(t) and added(t).count(("edge-1", 0, A)) == 1
    assert "edge-1" not in t.completed and "edge-1" in t.outstanding
    assert t.counters.malformed == 1 and t.counters.accepted == 2
    assert offer_own(t, chunk("edge-0", value=0.0)) is Verdict.ACCEPTED
    np.testing.assert_allclose(t.aggregator.result()[:A], 1.0)  # 1/2 each, not 2/3


@pytest.mark.parametrize(
    "first, second",
    [
        ((0, 0, A), (1, 0, A)),  # index 1 at the same offset as index 0
        ((0, 0, 2 * A), (1, A, A)),  # index 1 inside index 0
        ((1, A, A), (0, 0, 2 * A)),  # index 0 over index 1, arriving second
        ((2, 2 * A, A), (0, A, 2 * A)),  # index 0 over index 2 (not neighbours)
    ],
    ids=["same-offset", "inside", "index0-over-index1", "index0-over-index2"],
)
def test_any_overlap_is_malformed(
    first: tuple[int, int, int], second: tuple[int, int, int]
) -> None:
    t = tracker()
    assert offer_own(t, chunk("edge-0", first[0], 4, first[1], first[2])) is Verdict.ACCEPTED
    assert offer_own(t, chunk("edge-0", second[0], 4, second[1], second[2])) is Verdict.MALFORMED
    assert added(t) == [("edge-0", first[1], first[2])]


def test_a_gap_between_neighbours_is_malformed_whichever_arrives_second() -> None:
    t = tracker()
    assert offer_own(t, chunk(index=0, count=3, offset=0, length=A)) is Verdict.ACCEPTED
    assert offer_own(t, chunk(index=1, count=3, offset=2 * A, length=A)) is Verdict.MALFORMED
    t = tracker()
    assert offer_own(t, chunk(index=2, count=3, offset=3 * A)) is Verdict.ACCEPTED
    assert offer_own(t, chunk(index=1, count=3, offset=A, length=A)) is Verdict.MALFORMED
    assert offer_own(t, chunk(index=0, count=3, offset=0, length=A)) is Verdict.ACCEPTED
    assert offer_own(t, chunk(index=1, count=3, offset=A, length=2 * A)) is Verdict.ACCEPTED
    assert t.completed == ("edge-0",) and t.counters.malformed == 1


def test_a_gap_would_otherwise_complete_a_sender_with_a_block_missing() -> None:
    t = tracker()
    # count 2: [0, A) and [2A, 4A) are two chunks, no overlap, but block 1 is never sent
    assert offer_own(t, chunk(index=0, count=2, offset=0, length=A)) is Verdict.ACCEPTED
    assert offer_own(t, chunk(index=1, count=2, offset=2 * A)) is Verdict.MALFORMED
    assert not t.completed


def test_chunks_out_of_index_order_are_malformed() -> None:
    t = tracker()
    # index 0 at [A, 2A) and index 2 at [0, A): no overlap, not neighbours, but no tiling in
    # index order can hold both, so index 2 never goes in
    assert offer_own(t, chunk(index=0, count=4, offset=A, length=A)) is Verdict.ACCEPTED
    assert offer_own(t, chunk(index=2, count=4, offset=0, length=A)) is Verdict.MALFORMED
    assert added(t) == [("edge-0", A, A)]


# --- duplicates ------------------------------------------------------------------------------


def test_a_replayed_chunk_is_a_duplicate_and_the_aggregate_does_not_change() -> None:
    t = tracker()
    first = chunk(index=0, count=2, offset=0, length=A, value=2.0)
    assert offer_own(t, first) is Verdict.ACCEPTED
    before = t.aggregator.result()
    assert offer_own(t, first) is Verdict.DUPLICATE
    assert offer_own(t, first) is Verdict.DUPLICATE
    np.testing.assert_array_equal(t.aggregator.result(), before)
    assert len(added(t)) == 1 and t.counters.duplicate == 2
    last = chunk(index=1, count=2, offset=A)
    assert offer_own(t, last) is Verdict.ACCEPTED
    assert offer_own(t, last) is Verdict.DUPLICATE  # also once the sender is complete
    assert t.completed == ("edge-0",) and len(added(t)) == 2


def test_the_same_index_over_another_slice_is_malformed_not_a_duplicate() -> None:
    t = tracker()
    assert offer_own(t, chunk(index=0, count=3, offset=0, length=A)) is Verdict.ACCEPTED
    assert offer_own(t, chunk(index=0, count=3, offset=0, length=2 * A)) is Verdict.MALFORMED
    assert t.counters.duplicate == 0 and len(added(t)) == 1


# --- stale, unexpected, forged ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change, verdict",
    [
        ({"round": 4}, Verdict.STALE),
        ({"round": 6}, Verdict.STALE),
        ({"version": 3}, Verdict.STALE),  # trained from an older model
        ({"version": 5}, Verdict.STALE),
        ({"job": "k"}, Verdict.UNEXPECTED),
        ({"role": "delta", "num_samples": 0}, Verdict.UNEXPECTED),
        ({"role": "model", "num_samples": 0}, Verdict.UNEXPECTED),
    ],
    ids=["round-4", "round-6", "version-3", "version-5", "job", "role-delta", "role-model"],
)
def test_chunks_of_another_round_version_job_or_role_never_count(
    change: dict[str, Any], verdict: Verdict
) -> None:
    t = tracker()
    assert offer_own(t, chunk(**change)) is verdict
    assert added(t) == [] and not t.completed
    assert t.counters.as_dict()[verdict.value] == 1
    assert offer_own(t, chunk()) is Verdict.ACCEPTED  # the sender's real update still counts


def test_a_chunk_on_another_edges_topic_is_unexpected() -> None:
    t = tracker()
    # edge-1 (selected, no signatures required) posts an update in edge-0's name on its own topic
    assert t.offer(chunk("edge-0"), "edge-1") is Verdict.UNEXPECTED
    assert t.offer(chunk("edge-1"), "edge-0") is Verdict.UNEXPECTED
    assert added(t) == [] and not t.completed and t.counters.unexpected == 2


def test_a_sender_not_selected_this_round_is_unexpected() -> None:
    t = tracker()
    assert offer_own(t, chunk("edge-9")) is Verdict.UNEXPECTED
    assert added(t) == [] and not t.completed and t.counters.unexpected == 1


def test_with_keys_only_chunks_signed_by_the_senders_key_count() -> None:
    t = tracker(keys={"edge-0": KEY.public_key(), "edge-1": OTHER.public_key()})
    assert offer_own(t, chunk("edge-0")) is Verdict.FORGED  # unsigned
    assert offer_own(t, sign(chunk("edge-0"), OTHER.sign)) is Verdict.FORGED  # edge-1's key
    assert offer_own(t, sign(chunk("edge-2"), KEY.sign)) is Verdict.FORGED  # no enrolled key
    signed = sign(chunk("edge-0", value=3.0), KEY.sign)
    moved = dataclasses.replace(signed, num_samples=1000)  # a header changed after signing
    assert offer_own(t, moved) is Verdict.FORGED
    assert added(t) == [] and t.counters.forged == 4
    assert offer_own(t, signed) is Verdict.ACCEPTED
    assert t.completed == ("edge-0",)


def test_without_keys_unsigned_chunks_count() -> None:
    t = tracker(keys=None)
    assert offer_own(t, chunk("edge-0")) is Verdict.ACCEPTED


# --- malformed headers and values ------------------------------------------------------------


@pytest.mark.parametrize(
    "later",
    [
        {"count": 3},  # chunk 1 says the update has 3 chunks, chunk 0 said 2
        {"num_samples": 11},  # chunk 1 claims another FedAvg weight
    ],
    ids=["count", "num_samples"],
)
def test_chunks_of_one_update_must_agree_on_count_and_samples(later: dict[str, Any]) -> None:
    t = tracker()
    assert offer_own(t, chunk(index=0, count=2, offset=0, length=A)) is Verdict.ACCEPTED
    fields: dict[str, Any] = {"index": 1, "count": 2, "offset": A, **later}
    assert offer_own(t, chunk(**fields)) is Verdict.MALFORMED
    assert not t.completed and len(added(t)) == 1
    assert offer_own(t, chunk(index=1, count=2, offset=A)) is Verdict.ACCEPTED
    assert t.completed == ("edge-0",) and t.num_samples == 10


@pytest.mark.parametrize(
    "change",
    [
        {"total": 3 * A},  # not this model's size
        {"total": 5 * A},
        {"num_samples": 0},  # an update without weight
        {"num_samples": 101},  # more samples than any edge holds (max_samples=100 here)
    ],
    ids=["total-3A", "total-5A", "num_samples-0", "num_samples-101"],
)
def test_headers_that_do_not_fit_the_round_are_malformed(change: dict[str, Any]) -> None:
    t = tracker(max_samples=100)
    assert offer_own(t, chunk(**change)) is Verdict.MALFORMED
    assert added(t) == [] and t.counters.malformed == 1
    assert offer_own(t, chunk(num_samples=100)) is Verdict.ACCEPTED


def test_values_that_do_not_decode_are_malformed() -> None:
    t = tracker()
    good = chunk()
    bad_digest = dataclasses.replace(good, digest=bytes(16))
    nan = np.full(TOTAL, np.nan, dtype=np.float32).tobytes()
    short = good.data[:-4]
    for bad in (
        bad_digest,
        dataclasses.replace(good, data=nan, digest=digest(nan)),
        dataclasses.replace(good, data=short, digest=digest(short)),
    ):
        assert offer_own(t, bad) is Verdict.MALFORMED
    assert added(t) == [] and t.counters.malformed == 3
    assert offer_own(t, good) is Verdict.ACCEPTED


def test_values_past_the_bound_are_out_of_range_and_never_folded_in() -> None:
    t = tracker(max_abs=100.0)
    assert offer_own(t, chunk(value=-100.5)) is Verdict.OUT_OF_RANGE
    assert added(t) == [] and t.counters.out_of_range == 1 and not t.completed
    assert offer_own(t, chunk(value=100.0)) is Verdict.ACCEPTED


def test_counters_count_each_verdict_once() -> None:
    t = tracker(max_abs=100.0)
    offers = [
        (chunk("edge-0"), "edge-0"),  # accepted
        (chunk("edge-0"), "edge-0"),  # duplicate
        (chunk("edge-1", round=4), "edge-1"),  # stale
        (chunk("edge-9"), "edge-9"),  # unexpected
        (chunk("edge-1", total=2 * A), "edge-1"),  # malformed
        (chunk("edge-1", value=1e3), "edge-1"),  # out_of_range
    ]
    for c, topic in offers:
        t.offer(c, topic)
    assert t.counters.as_dict() == {
        "accepted": 1, "duplicate": 1, "stale": 1, "unexpected": 1, "malformed": 1,
        "forged": 0, "out_of_range": 1, "overweight": 0,
    }  # fmt: skip


# --- departures ------------------------------------------------------------------------------


def test_a_departed_edge_is_not_waited_for_and_its_earlier_chunks_still_count() -> None:
    t = tracker()
    assert offer_own(t, chunk("edge-0")) is Verdict.ACCEPTED
    assert offer_own(t, chunk("edge-1", 0, 2, 0, A, 4.0)) is Verdict.ACCEPTED  # half, then gone
    assert not t.depart("edge-9")  # never selected
    assert not t.depart("edge-0")  # already delivered
    assert t.depart("edge-1")
    assert not t.depart("edge-1")  # said once
    assert t.departed == {"edge-1"} and t.outstanding == ("edge-2",) and not t.done
    assert t.depart("edge-2")
    assert t.done and t.outstanding == () and t.completed == ("edge-0",)
    assert t.num_samples == 10  # only complete updates count as participants
    result = t.aggregator.result()
    np.testing.assert_allclose(result[:A], 2.5)  # edge-1's slice that arrived keeps its weight
    np.testing.assert_allclose(result[A:], 1.0)


def test_every_selected_edge_gone_ends_the_round_with_nobody() -> None:
    t = tracker()
    for edge in SELECTED:
        assert t.depart(edge)
    assert t.done and not t.completed and t.num_samples == 0


# --- claimed weight ---------------------------------------------------------------------------


def test_a_claim_above_the_declared_samples_is_overweight_and_never_folded_in() -> None:
    """An edge's valid identity cannot buy the aggregate by claiming 10^7 samples: the claim is
    bounded by what it declared when it joined (its presence), honest claims pass."""
    t = tracker(declared={"edge-0": 10, "edge-1": 8, "edge-2": 10})
    assert offer_own(t, chunk("edge-0", num_samples=10)) is Verdict.ACCEPTED  # = declared
    assert offer_own(t, chunk("edge-1", value=1e3, num_samples=10_000_000)) is Verdict.OVERWEIGHT
    assert offer_own(t, chunk("edge-1", num_samples=9)) is Verdict.OVERWEIGHT  # 9 > 8
    assert offer_own(t, chunk("edge-1", num_samples=5)) is Verdict.ACCEPTED  # fewer: fine (drift)
    assert t.counters.overweight == 2
    assert added(t) == [("edge-0", 0, TOTAL), ("edge-1", 0, TOTAL)]


def test_a_sender_that_never_declared_may_claim_nothing() -> None:
    t = tracker(declared={"edge-0": 10})
    assert offer_own(t, chunk("edge-1", num_samples=1)) is Verdict.OVERWEIGHT
    assert tracker().offer(chunk("edge-1", num_samples=1), "edge-1") is Verdict.ACCEPTED
