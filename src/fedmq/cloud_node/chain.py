"""Chained (cyclic) mode: the model travels from edge to edge; the cloud watches every hop.

Each pass (a "round") the cloud names an order of the joined edges in a task and sends the model
to the first one on `chain/<edge>`. Every edge trains what it receives on its own data and
publishes the result to the next edge's `chain/` topic (the last one to `chain/<cloud>`). The
cloud subscribes to `chain/+`, so it sees each hop as it passes and evaluates it. An edge that
does not pass the model on within `round_timeout` (cut off) is skipped, and one that presence
reports gone (its will or goodbye) is skipped at once: the cloud sends the model it last saw to
the edge after it, and the chain goes on.

Hop k of a pass is the model on its way to position k of the order: chunks carry the pass as
`round` and k as `version`; an edge's output carries its input's k + 1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from fedmq.codec import CodecSpec, TensorChunk, assemble, encode, split_vector
from fedmq.errors import CodecError
from fedmq.transport import Reassembler

if TYPE_CHECKING:
    from fedmq.cloud_node.runtime import CloudNode, RoundRecord
    from fedmq.workloads import Dataset

log = logging.getLogger(__name__)

Hop = tuple[str, int, int, np.ndarray]  # (sender, pass, position it goes to, model)


class ChainLoop:
    def __init__(self, node: CloudNode) -> None:
        cfg = node.config
        self.node = node
        self.reassembler = Reassembler(max_bytes=cfg.max_reassembly_bytes, timeout_s=300.0)
        self.hops: asyncio.Queue[Hop] = asyncio.Queue()
        self.skipped = 0
        self._presence = asyncio.Event()

    def presence_changed(self) -> None:
        """An edge came or went: a hop waiting for an edge that left stops waiting."""
        self._presence.set()

    def offer(self, chunk: TensorChunk) -> None:
        """A decoded chunk seen on any `chain/` topic (on the MQTT reader)."""
        node = self.node
        if chunk.role != "model" or chunk.job != node.config.job:
            node._bad(node.topics.chain_all, CodecError(f"{chunk.role} chunk on a chain topic"))
            return
        if chunk.sender != node.config.node_id and not node._authentic(chunk):
            return
        chunks = self.reassembler.add(chunk, time.monotonic())
        if chunks is None:
            return
        try:
            flat = assemble(chunks, node.limits, require_finite=True)
        except CodecError as exc:
            node._bad(node.topics.chain_all, exc)
            return
        self.hops.put_nowait((chunk.sender, chunk.round, chunk.version, flat))

    async def run(
        self,
        flat: np.ndarray,
        test: Dataset,
        on_round: Callable[[RoundRecord], None] | None,
    ) -> tuple[list[RoundRecord], np.ndarray]:
        from fedmq.cloud_node.runtime import RoundRecord
        from fedmq.workloads import evaluate

        node, cfg = self.node, self.node.config
        records: list[RoundRecord] = []
        began = time.perf_counter()
        for rnd in range(1, cfg.rounds + 1):
            t0, before = time.perf_counter(), node.meter.read()
            order = tuple(node.ready)
            # Hops carry whole models: in the (dense) downlink codec, not the update codec.
            task = cfg.task(
                round=rnd, version=0, selected=order, mode="chain", codec=cfg.downlink_codec
            )
            await node._publish(node.topics.task, encode(task), retain=True)
            # Each edge learns only its successor, on its own topic: a message of constant
            # size per edge, where the task listing the whole order grew with the fleet.
            await node._session_publish_all(
                [
                    (node.topics.chain(edge), encode(replace(task, next=after)))
                    for edge, after in zip(order, (*order[1:], "cloud"), strict=True)
                ],
                retain=False,
            )
            await self._send(flat, order[0], rnd, 0)
            passed: list[str] = []
            hop_metrics: dict[str, dict[str, float]] = {}
            for k, edge in enumerate(order):
                hop_began = time.perf_counter()
                out = await self._wait_for(edge, rnd, k + 1, cfg.round_timeout)
                if out is None:
                    self.skipped += 1
                    gone = edge not in node.online
                    log.warning(
                        "chain pass %d: %s %s after %.2f s; skipped", rnd, edge,
                        "went offline" if gone else "did not pass the model on",
                        time.perf_counter() - hop_began,
                    )  # fmt: skip
                    if k + 1 < len(order):
                        await self._send(flat, order[k + 1], rnd, k + 1)
                    continue
                flat = out
                passed.append(edge)
                loss, accuracy = await asyncio.to_thread(evaluate, cfg.model, flat, test)
                hop_metrics[edge] = {"hop": k + 1, "accuracy": accuracy, "loss": loss,
                                     "at": time.perf_counter() - t0}  # fmt: skip
            loss, accuracy = await asyncio.to_thread(evaluate, cfg.model, flat, test)
            after = node.meter.read()
            record = RoundRecord(
                round=rnd, version=rnd, accuracy=accuracy, loss=loss, selected=order,
                participants=tuple(passed), num_samples=0,
                seconds=time.perf_counter() - t0, round_seconds=time.perf_counter() - t0,
                quorum_met=bool(passed),
                counters={"hops": len(passed), "skipped": len(order) - len(passed),
                          "forged": node.forged},
                cloud_sent=after.sent - before.sent,
                cloud_received=after.received - before.received,
                client_metrics=hop_metrics, elapsed=time.perf_counter() - began,
            )  # fmt: skip
            records.append(record)
            if on_round is not None:
                on_round(record)
        return records, flat

    async def _wait_for(
        self, edge: str, rnd: int, position: int, timeout: float
    ) -> np.ndarray | None:
        """The model `edge` passes on in pass `rnd`, or None when it does not come in time or
        presence says the edge is gone (its will or goodbye: nothing more will come from it)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if edge not in self.node.online and self.hops.empty():
                        return None
                    self._presence.clear()
                    get = asyncio.ensure_future(self.hops.get())
                    gone = asyncio.ensure_future(self._presence.wait())
                    try:
                        await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        gone.cancel()
                        if not get.done():
                            get.cancel()
                    if get.done() and not get.cancelled():
                        sender, r, k, flat = get.result()
                        if (sender, r, k) == (edge, rnd, position):
                            return flat
        except TimeoutError:
            return None

    async def _send(self, flat: np.ndarray, to: str, rnd: int, position: int) -> None:
        node, cfg = self.node, self.node.config
        payloads = split_vector(
            flat, CodecSpec.parse(cfg.downlink_codec), max_payload=cfg.max_payload, job=cfg.job,
            sender=cfg.node_id, role="model", round=rnd, version=position,
        )  # fmt: skip
        await node._session_publish_all(
            [(node.topics.chain(to), p) for p in payloads], retain=False
        )
