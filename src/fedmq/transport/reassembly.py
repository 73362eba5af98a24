"""Pure bookkeeping for chunked vectors: exactly-once counting and bounded reassembly (no I/O).

Clocks are passed in (`now`), so tests drive time by hand.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from fedmq.codec import TensorChunk


class Deduper:
    """Remembers which keys were seen, per epoch (a round or version), for the newest few epochs.

    QoS 1 may deliver a message twice; the caller counts each key once. Keys of epochs older than
    the newest `keep` are forgotten: the protocol rejects those as stale before they get here.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.duplicates = 0
        self._epochs: dict[int, set[Hashable]] = {}

    def first_time(self, epoch: int, key: Hashable) -> bool:
        seen = self._epochs.get(epoch)
        if seen is None:
            seen = self._epochs[epoch] = set()
            for old in sorted(self._epochs)[: -self.keep]:
                del self._epochs[old]
        if key in seen:
            self.duplicates += 1
            return False
        seen.add(key)
        return True


GroupKey = tuple[str, str, int]  # (sender, role, version)


@dataclass
class _Group:
    started: float
    count: int
    total: int
    chunks: dict[int, TensorChunk] = field(default_factory=dict)
    nbytes: int = 0


@dataclass
class ReassemblyStats:
    completed: int = 0
    duplicates: int = 0
    inconsistent: int = 0
    expired: int = 0
    evicted: int = 0


class Reassembler:
    """Collects the chunks of whole vectors, bounded in bytes held and in time.

    `add` returns the full, index-ordered chunk list when the last chunk of a vector arrives.
    A group that waits longer than `timeout_s` is dropped; when holding a new chunk would pass
    `max_bytes`, the oldest groups are dropped first. Both are counted.
    """

    def __init__(self, *, max_bytes: int, timeout_s: float) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.stats = ReassemblyStats()
        self._groups: OrderedDict[GroupKey, _Group] = OrderedDict()
        self._held = 0

    @property
    def held_bytes(self) -> int:
        return self._held

    def add(self, chunk: TensorChunk, now: float) -> list[TensorChunk] | None:
        self.expire(now)
        key = (chunk.sender, chunk.role, chunk.version)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(started=now, count=chunk.count, total=chunk.total)
        if (chunk.count, chunk.total) != (group.count, group.total):
            self.stats.inconsistent += 1
            return None
        if chunk.index in group.chunks:
            self.stats.duplicates += 1
            return None
        size = len(chunk.data)
        if size > self.max_bytes:
            self.stats.evicted += 1
            return None
        while self._held + size > self.max_bytes and self._groups:
            self._drop(next(iter(self._groups)))
            self.stats.evicted += 1
            if key not in self._groups:
                return None
        group.chunks[chunk.index] = chunk
        group.nbytes += size
        self._held += size
        if len(group.chunks) < group.count:
            return None
        self._drop(key)
        self.stats.completed += 1
        return [group.chunks[i] for i in range(group.count)]

    def expire(self, now: float) -> int:
        old = [k for k, g in self._groups.items() if now - g.started > self.timeout_s]
        for key in old:
            self._drop(key)
        self.stats.expired += len(old)
        return len(old)

    def discard_older(self, sender: str, role: str, version: int) -> None:
        """Drop groups of `sender`/`role` older than `version` (a newer vector supersedes them)."""
        for key in [k for k in self._groups if k[0] == sender and k[1] == role and k[2] < version]:
            self._drop(key)

    def _drop(self, key: GroupKey) -> None:
        group = self._groups.pop(key)
        self._held -= group.nbytes
