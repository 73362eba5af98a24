"""Pure bookkeeping of one synchronous round at the cloud: which chunk counts, exactly once.

The runtime hands every decoded update chunk to `RoundTracker.offer`; the tracker decides
(stale, unexpected, duplicate, malformed, accepted), feeds accepted slices to the aggregator and
knows when every selected client has delivered all its chunks. No I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmq.cloud_node.screen import NormScreen
from fedmq.cloud_node.strategy import Aggregator
from fedmq.codec import BadSignature, Limits, TensorChunk, check, chunk_values
from fedmq.errors import CodecError


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # QoS 1 redelivery, or a replay of a chunk already counted
    STALE = "stale"  # for another round or model version
    UNEXPECTED = "unexpected"  # from a client not selected, or not matching its topic
    MALFORMED = "malformed"  # a header that lies, or values that do not decode
    FORGED = "forged"  # unsigned, or not signed by the sender's enrolled key
    OUT_OF_RANGE = "out_of_range"  # finite, but a change no training step makes (|x| > bound)
    OVERWEIGHT = "overweight"  # claims more samples than its sender declared when it joined


@dataclass
class RoundCounters:
    accepted: int = 0
    duplicate: int = 0
    stale: int = 0
    unexpected: int = 0
    malformed: int = 0
    forged: int = 0
    out_of_range: int = 0
    overweight: int = 0

    def count(self, verdict: Verdict) -> None:
        setattr(self, verdict.value, getattr(self, verdict.value) + 1)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class _ClientProgress:
    count: int
    num_samples: int
    # index -> the [start, end) it covers: a chunk counts once per index AND per coordinate
    chunks: dict[int, tuple[int, int]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def misfit(self, index: int, start: int, end: int) -> str | None:
        """Why [start, end) as chunk `index` cannot be part of an exact tiling, or None.

        The slices of one update must tile [offset of chunk 0, total) in index order: a head-only
        edge's slice starts above 0, and the last chunk ends at total (TensorChunk checks that).
        A chunk must lie after every lower index and before every higher one, which also refuses
        any overlap before its values reach the streaming aggregator (it cannot take them out
        again). A gap is refused against whichever neighbour is already in, so once all `count`
        chunks are accepted every adjacent pair has been checked and the tiling is exact.
        """
        for other, (lo, hi) in self.chunks.items():
            if (other < index and hi > start) or (other > index and lo < end):
                return f"overlaps or precedes chunk {other} [{lo}, {hi})"
        before, after = self.chunks.get(index - 1), self.chunks.get(index + 1)
        if before is not None and before[1] != start:
            return f"leaves a gap after chunk {index - 1}, which ends at {before[1]}"
        if after is not None and after[0] != end:
            return f"leaves a gap before chunk {index + 1}, which starts at {after[0]}"
        return None


class RoundTracker:
    def __init__(
        self,
        *,
        job: str,
        round: int,
        version: int,
        total: int,
        selected: tuple[str, ...],
        aggregator: Aggregator,
        limits: Limits,
        max_samples: int = 10_000_000,
        keys: Mapping[str, Ed25519PublicKey] | None = None,
        max_abs: float = 1e4,
        declared: Mapping[str, int] | None = None,
        screen: NormScreen | None = None,
    ) -> None:
        self.job, self.round, self.version, self.total = job, round, version, total
        self.selected = frozenset(selected)
        self.aggregator = aggregator
        self.limits = limits
        self.max_samples = max_samples
        self.keys = keys  # None: signatures are not required
        # The samples each edge declared when it joined: the most FedAvg weight it may claim. A
        # valid identity that claims 10^7 samples would otherwise outweigh every honest edge.
        self.declared = declared  # None: only `max_samples` bounds the claim
        self.screen = screen  # clips update slices far larger than the last rounds' (or None)
        # An update coordinate this large is an attack or a broken device, never training: the
        # streaming average cannot take it out again once folded in, so it never goes in.
        self.max_abs = max_abs
        self.counters = RoundCounters()
        self._progress: dict[str, _ClientProgress] = {}
        # Selected edges that presence says are gone (a will or a goodbye): the round stops
        # waiting for them. Chunks they sent before leaving still count.
        self.departed: set[str] = set()

    def offer(self, chunk: TensorChunk, topic_sender: str) -> Verdict:
        verdict = self._judge(chunk, topic_sender)
        self.counters.count(verdict)
        return verdict

    def _judge(self, chunk: TensorChunk, topic_sender: str) -> Verdict:
        if chunk.job != self.job or chunk.role != "update":
            return Verdict.UNEXPECTED
        if chunk.round != self.round or chunk.version != self.version:
            return Verdict.STALE
        if chunk.sender != topic_sender or chunk.sender not in self.selected:
            return Verdict.UNEXPECTED
        if self.keys is not None:
            try:
                check(chunk, self.keys)
            except BadSignature:
                return Verdict.FORGED
        if chunk.total != self.total or not 0 < chunk.num_samples <= self.max_samples:
            return Verdict.MALFORMED
        if self.declared is not None and chunk.num_samples > self.declared.get(chunk.sender, 0):
            return Verdict.OVERWEIGHT
        progress = self._progress.get(chunk.sender)
        if progress is not None and (chunk.count, chunk.num_samples) != (
            progress.count,
            progress.num_samples,
        ):
            return Verdict.MALFORMED
        end = chunk.offset + chunk.length
        if progress is not None and chunk.index in progress.chunks:
            # A QoS 1 redelivery or replay covers the same slice; the same index elsewhere lies.
            if progress.chunks[chunk.index] == (chunk.offset, end):
                return Verdict.DUPLICATE
            return Verdict.MALFORMED
        if progress is not None and progress.misfit(chunk.index, chunk.offset, end) is not None:
            return Verdict.MALFORMED
        try:
            values = chunk_values(chunk, self.limits)
        except CodecError:
            return Verdict.MALFORMED
        if values.size and float(np.max(np.abs(values))) > self.max_abs:
            return Verdict.OUT_OF_RANGE
        if progress is None:
            progress = self._progress[chunk.sender] = _ClientProgress(
                chunk.count, chunk.num_samples
            )
        progress.chunks[chunk.index] = (chunk.offset, end)
        progress.metrics.update(chunk.metrics)
        if self.screen is not None:
            values = self.screen.screen(chunk.offset, values)
        self.aggregator.add(chunk.sender, chunk.offset, values, float(chunk.num_samples))
        return Verdict.ACCEPTED

    @property
    def completed(self) -> tuple[str, ...]:
        return tuple(sorted(c for c, p in self._progress.items() if len(p.chunks) == p.count))

    def depart(self, client: str) -> bool:
        """`client` went offline: stop waiting for it. True if the round was waiting for it."""
        if client not in self.selected or client in self.completed or client in self.departed:
            return False
        self.departed.add(client)
        return True

    @property
    def outstanding(self) -> tuple[str, ...]:
        """Selected edges the round still waits for: neither complete nor gone."""
        return tuple(sorted(self.selected - set(self.completed) - self.departed))

    @property
    def done(self) -> bool:
        return not self.outstanding

    @property
    def num_samples(self) -> int:
        return sum(self._progress[c].num_samples for c in self.completed)

    def client_metrics(self) -> dict[str, dict[str, float]]:
        return {c: dict(p.metrics) for c, p in sorted(self._progress.items())}
