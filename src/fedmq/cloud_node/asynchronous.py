"""Asynchronous mode (FedBuff): the cloud never waits for a round.

Every online edge (MQTT presence: birth adds it, last will or goodbye removes it) is told to
train from the newest version; it trains when free and publishes its update based on the
version it trained from. Whole updates are reassembled, then offered to the pure `FedBuffer`,
which weighs them by staleness and rejects those older than the bound. Every `buffer_size`
accepted updates the buffer is applied (through the strategy's server optimizer, if it has
one), the version moves on, and the newest model goes out: retained in full for edges that
join or fall behind, as a delta for the rest, with a new task naming who is online.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmq.cloud_node.fedbuff import FedBuffConfig, FedBuffer, Offer
from fedmq.codec import TensorChunk, assemble, encode
from fedmq.errors import CodecError
from fedmq.transport import Deduper, Reassembler

if TYPE_CHECKING:
    from fedmq.cloud_node.runtime import CloudNode, RoundRecord
    from fedmq.workloads import Dataset

log = logging.getLogger(__name__)


class AsyncLoop:
    def __init__(self, node: CloudNode, size: int) -> None:
        cfg = node.config
        self.node = node
        self.buffer = FedBuffer(
            size=size,
            config=FedBuffConfig(buffer_size=cfg.buffer_size, max_staleness=cfg.max_staleness,
                                 staleness=cfg.staleness),
        )  # fmt: skip
        self.reassembler = Reassembler(max_bytes=cfg.max_reassembly_bytes, timeout_s=300.0)
        self.seen = Deduper(keep=cfg.max_staleness + 2)  # whole updates already offered
        self.version = 0
        self.ready = asyncio.Event()
        self.presence_changed = asyncio.Event()
        base = getattr(node.strategy, "base", node.strategy)
        if base.name != "fedavg":
            log.warning(
                "async mode weighs updates with FedBuff; the %s rule is not used (a server "
                "optimizer is)", base.name,
            )  # fmt: skip
        self.contributors: list[str] = []
        self.staleness: list[int] = []

    def offer(self, chunk: TensorChunk, node_id: str) -> None:
        """A decoded update chunk (on the MQTT reader): reassemble, then judge the whole."""
        if chunk.role != "update" or chunk.sender != node_id or chunk.job != self.node.config.job:
            self.buffer.counters.bad += 1
            return
        if not self.node._authentic(chunk):
            return
        if self.version - chunk.version > self.buffer.config.max_staleness:
            self.buffer.counters.too_stale += 1  # do not spend memory reassembling it
            return
        chunks = self.reassembler.add(chunk, time.monotonic())
        if chunks is None:
            return
        try:
            delta = assemble(chunks, self.node.limits, require_finite=True)
        except CodecError as exc:
            self.node._bad(self.node.topics.update(node_id), exc)
            return
        if delta.size and float(np.max(np.abs(delta))) > self.node.config.max_update_value:
            self.buffer.counters.bad += 1  # finite, but no training step makes it
            return
        # Marked only once it checked out, so a broken copy cannot shadow the genuine update.
        if not self.seen.first_time(chunk.version, chunk.sender):
            self.buffer.counters.duplicate += 1
            return
        verdict, weight = self.buffer.offer(
            chunk.sender, chunk.version, self.version, delta, chunk.num_samples,
            capacity=self._k(),
        )  # fmt: skip
        if verdict is Offer.ACCEPTED:
            self.contributors.append(chunk.sender)
            self.staleness.append(self.version - chunk.version)
            log.debug("async: %s v%d accepted, weight %.3f", chunk.sender, chunk.version, weight)
        if self._full():
            self.ready.set()

    def _k(self) -> int:
        # Each edge trains once per version, so K above the joined edges would wait forever.
        return min(self.buffer.config.buffer_size, max(1, len(self.node.ready)))

    def _full(self) -> bool:
        return self.buffer.filled >= self._k()

    async def run(
        self,
        flat: np.ndarray,
        test: Dataset,
        on_round: Callable[[RoundRecord], None] | None,
        first: int = 0,
        records: list[RoundRecord] | None = None,
    ) -> tuple[list[RoundRecord], np.ndarray]:
        """Server steps `first + 1 .. rounds` (a resumed run starts past its checkpoint's)."""
        from fedmq.cloud_node.runtime import RoundRecord
        from fedmq.workloads import evaluate

        node, cfg = self.node, self.node.config
        records = list(records or [])
        started = time.perf_counter()
        await node._publish_model(self.version, round=self.version + 1)
        await self._publish_task()
        optimizer = getattr(node.strategy, "optimizer", None)
        for update in range(first + 1, cfg.rounds + 1):
            before, t0 = node.meter.read(), time.perf_counter()
            while not self._full():
                waiter = asyncio.ensure_future(self.ready.wait())
                presence = asyncio.ensure_future(self.presence_changed.wait())
                await asyncio.wait({waiter, presence}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                presence.cancel()
                if self.presence_changed.is_set():
                    self.presence_changed.clear()
                    await self._publish_task()  # who is online changed: tell them to train
                self.ready.clear()
            samples, applied = self.buffer.samples, self.buffer.filled
            contributors, stale = self.contributors[:applied], self.staleness[:applied]
            del self.contributors[:applied], self.staleness[:applied]
            change = self.buffer.flush(self._k())
            flat = (
                optimizer.step(flat, change) if optimizer is not None else flat + change
            ).astype(np.float32)
            self.version += 1
            node._prepare_delta(flat, self.version + 1, self.version)
            await node._publish_model(self.version, round=self.version + 1)
            await self._publish_task()
            round_seconds = time.perf_counter() - t0
            loss, accuracy = await asyncio.to_thread(evaluate, cfg.model, flat, test)
            after = node.meter.read()
            record = RoundRecord(
                round=update, version=self.version, accuracy=accuracy, loss=loss,
                selected=tuple(node.ready), participants=tuple(contributors),
                num_samples=int(samples), seconds=time.perf_counter() - t0,
                round_seconds=round_seconds, quorum_met=True,
                counters={**self.buffer.counters.as_dict(), "forged": node.forged,
                          "max_staleness_seen": max(stale, default=0)},
                cloud_sent=after.sent - before.sent,
                cloud_received=after.received - before.received,
                elapsed=time.perf_counter() - started,
            )  # fmt: skip
            records.append(record)
            if cfg.checkpoint:  # after the step: the model moved, the buffer holds what came since
                node._save(
                    Path(cfg.checkpoint), update, self.version, flat, None, records,
                    buffer=self.buffer.state(),
                )  # fmt: skip
            if on_round is not None:
                on_round(record)
        return records, flat

    async def _publish_task(self) -> None:
        node, cfg = self.node, self.node.config
        online = tuple(node.ready)
        if not online:
            return
        task = cfg.task(
            round=self.version + 1,
            version=self.version,
            selected=online,
            mode="async",
            attempt=node._attempt,
        )
        await node._publish(node.topics.task, encode(task), retain=True)
