"""Whole federated rounds over real brokers: the same run on amqtt and on Mosquitto."""

import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from fedmq.cli.config import RunConfig
from fedmq.cli.launcher import run_federated
from fedmq.codec import ALIGN, RoundTask, TensorChunk, decode, encode
from fedmq.errors import CodecError
from fedmq.transport import Session, SessionConfig, Topics

pytestmark = pytest.mark.integration

SMALL = {"clients": 3, "rounds": 2, "local_epochs": 1, "job": "itest"}


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
            for node in task.selected:
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
