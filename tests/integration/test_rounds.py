"""Whole federated rounds over real brokers: the same run on amqtt and on Mosquitto."""

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zstandard

from fedmq.cli.config import RunConfig
from fedmq.cli.launcher import run_federated
from fedmq.cloud_node import CloudConfig, CloudNode
from fedmq.cloud_node.runtime import CloudResult
from fedmq.codec import ALIGN, RoundTask, TensorChunk, decode, encode
from fedmq.edge_node import EdgeConfig, EdgeNode
from fedmq.errors import CodecError
from fedmq.transport import Session, SessionConfig, Topics

pytestmark = pytest.mark.integration

SMALL: dict[str, Any] = {"clients": 3, "rounds": 2, "local_epochs": 1, "job": "itest"}


def final_model(out: Path) -> np.ndarray:
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    return np.concatenate([t.numpy().ravel() for t in state.values()])


async def test_rounds_on_both_brokers_give_the_same_model(
    amqtt_url: str, mosquitto_url: str, tmp_path: Path
) -> None:
    results = {}
    for name, url in (("amqtt", amqtt_url), ("mosquitto", mosquitto_url)):
        cfg = RunConfig(**SMALL, broker=url, out=str(tmp_path / name))
        summary, out = await run_federated(cfg)
        assert summary["rounds"] == 2 and summary["version"] == 2
        assert summary["final_accuracy"] > 0.5
        assert summary["bytes_up"] > 3 * 9610  # three edges each sent a model-sized delta
        rows = (out / "rounds.jsonl").read_text().splitlines()
        assert len(rows) == 2
        results[name] = final_model(out)
    # Same seed, same data, same order of operations: the broker must not matter.
    np.testing.assert_array_equal(results["amqtt"], results["mosquitto"])


async def _hostile(url: str, job: str, stop: asyncio.Event) -> dict[str, int]:
    """Publishes garbage to every edge's update topic whenever a round starts."""
    topics = Topics(job)
    sent = {"random": 0, "truncated": 0, "bomb": 0, "replayed": 0}
    tasks: asyncio.Queue[RoundTask] = asyncio.Queue()
    real: list[bytes] = []

    def on_message(topic: str, payload: bytes) -> None:
        if topic == topics.task and payload:
            tasks.put_nowait(decode(payload, expect=RoundTask))
        elif topic.startswith(f"{topics.prefix}/update/"):
            try:  # keep genuine chunks only (we also hear our own garbage)
                decode(payload, expect=TensorChunk)
                real.append(payload)
            except CodecError:
                pass

    cfg = SessionConfig(url, "mallory", subscriptions=(topics.task, topics.update_all))
    rng = np.random.default_rng(0)
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))  # 64 MiB of zeros, ~2 KiB
    async with Session(cfg, on_message) as s:
        while not stop.is_set():
            try:
                task = await asyncio.wait_for(tasks.get(), 0.2)
            except TimeoutError:
                for payload in real[-3:]:  # replay genuine chunks: QoS 1 duplicates, or worse
                    node = decode(payload, expect=TensorChunk).sender
                    await s.publish(topics.update(node), payload)
                    sent["replayed"] += 1
                real.clear()
                continue
            # The task names its edges by salt and threshold: test the names of this run's.
            for node in [f"edge-{i}" for i in range(SMALL["clients"]) if task.selects(f"edge-{i}")]:
                topic = topics.update(node)
                await s.publish(topic, rng.bytes(int(rng.integers(1, 5000))))
                sent["random"] += 1
                # a zstd bomb with a valid digest, claiming to be one small aligned slice
                chunk = TensorChunk(
                    job=job, sender=node, role="update", round=task.round, version=task.version,
                    index=0, count=2, total=9610, offset=0, length=ALIGN, encoding="fp32+zstd",
                    scale=1.0, num_samples=10, metrics={},
                    digest=hashlib.blake2b(bomb, digest_size=16).digest(), data=bomb,
                )  # fmt: skip
                await s.publish(topic, encode(chunk))
                sent["bomb"] += 1
            for payload in list(real):
                node = decode(payload, expect=TensorChunk).sender
                await s.publish(topics.update(node), payload[: len(payload) // 2])
                sent["truncated"] += 1
    return sent


async def test_garbage_on_the_update_topics_does_not_change_the_round(
    broker_url: str, tmp_path: Path
) -> None:
    clean_summary, clean_out = await run_federated(
        RunConfig(**SMALL, broker=broker_url, out=str(tmp_path / "clean"))
    )
    stop = asyncio.Event()
    attacker = asyncio.create_task(_hostile(broker_url, "itest", stop))
    await asyncio.sleep(0.3)
    summary, out = await run_federated(
        RunConfig(**SMALL, broker=broker_url, out=str(tmp_path / "attacked"))
    )
    stop.set()
    sent = await attacker
    assert sent["random"] >= 3 and sent["bomb"] >= 3
    # Garbage that lands between rounds is rejected too, but only in-round rejections are
    # counted against a round; at least round 1's garbage lands while the round is open.
    assert summary["malformed_messages"] >= 3
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert sum(r["counters"]["malformed"] for r in rounds) >= 1
    assert all(r["participants"] == ["edge-0", "edge-1", "edge-2"] for r in rounds)
    assert summary["final_accuracy"] == clean_summary["final_accuracy"]
    np.testing.assert_array_equal(final_model(out), final_model(clean_out))
    assert (out / "summary.json").stat().st_size > 0


async def _replayer(url: str, job: str, stop: asyncio.Event) -> dict[tuple[int, str], int]:
    """Publishes every genuine update chunk once more on its topic: replays within the round."""
    topics = Topics(job)
    heard: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    seen: set[bytes] = set()
    replayed: dict[tuple[int, str], int] = {}

    def on_message(topic: str, payload: bytes) -> None:
        if payload not in seen:  # we hear our own replays too: replay each chunk once
            seen.add(payload)
            heard.put_nowait((topic, payload))

    cfg = SessionConfig(url, "mallory", subscriptions=(topics.update_all,))
    async with Session(cfg, on_message) as s:
        while not stop.is_set():
            try:
                topic, payload = await asyncio.wait_for(heard.get(), 0.2)
            except TimeoutError:
                continue
            try:  # status messages share the wildcard
                chunk = decode(payload, expect=TensorChunk)
            except CodecError:
                continue
            await s.publish(topic, payload)
            key = (chunk.round, chunk.sender)
            replayed[key] = replayed.get(key, 0) + 1
    return replayed


async def _two_rounds(url: str, job: str) -> CloudResult:
    cloud = CloudNode(CloudConfig(broker=url, job=job, clients=3, rounds=2, local_epochs=1))
    # edge-2 trains for about a second, so each round is still open when the replays of the
    # two fast edges' chunks land (a replay after the round closed would be merely stale)
    speeds = {"edge-0": 0.0, "edge-1": 0.0, "edge-2": 1e7}
    edges = [
        EdgeNode(EdgeConfig(broker=url, node_id=n, job=job, compute_flops=f))
        for n, f in speeds.items()
    ]
    async with asyncio.TaskGroup() as tg:
        for e in edges:
            tg.create_task(e.run())
        return await asyncio.wait_for(cloud.run(), 120)


async def test_a_replayed_chunk_is_counted_duplicate_and_the_model_is_unchanged(
    broker_url: str,
) -> None:
    clean = await _two_rounds(broker_url, "dup-clean")
    stop = asyncio.Event()
    attacker = asyncio.create_task(_replayer(broker_url, "dup", stop))
    await asyncio.sleep(0.3)  # subscribed before the first round's chunks
    result = await _two_rounds(broker_url, "dup")
    stop.set()
    replayed = await attacker
    for rnd in (1, 2):  # the replays were really sent, for each fast edge in each round
        assert replayed.get((rnd, "edge-0"), 0) >= 1 and replayed.get((rnd, "edge-1"), 0) >= 1
    for ours, theirs in zip(result.records, clean.records, strict=True):
        # each fast edge's chunks came twice while the round waited for edge-2: once accepted,
        # then duplicate; every accepted chunk is one the clean run accepted too
        assert ours.counters["duplicate"] >= 2, ours.counters
        assert ours.counters["accepted"] == theirs.counters["accepted"]
        assert ours.participants == theirs.participants == ("edge-0", "edge-1", "edge-2")
    # edge-2's chunk is always last, and a + b == b + a: the aggregate is bit-identical
    np.testing.assert_array_equal(result.final_flat, clean.final_flat)
