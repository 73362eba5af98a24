"""An edge that starts its update and never finishes it: the round closes at its deadline."""

import asyncio

import numpy as np
import pytest

from fedmq.cloud_node import CloudConfig, CloudNode
from fedmq.codec import CodecSpec, RoundTask, Status, decode, encode, split_vector
from fedmq.edge_node import EdgeConfig, EdgeNode
from fedmq.transport import Session, SessionConfig, Topics

pytestmark = pytest.mark.integration


async def _half_edge(url: str, job: str, stop: asyncio.Event) -> int:
    """Joins as edge-2 and, for every task that selects it, sends only the first of its chunks."""
    topics, sent = Topics(job), 0
    tasks: asyncio.Queue[RoundTask] = asyncio.Queue()

    def on_message(topic: str, payload: bytes) -> None:
        if topic == topics.task and payload:
            tasks.put_nowait(decode(payload, expect=RoundTask))

    joined = Status(job=job, sender="edge-2", role="edge", online=True, num_samples=120)
    cfg = SessionConfig(url=url, client_id="half", subscriptions=(topics.task,))
    async with Session(cfg, on_message) as session:
        await session.publish(topics.status("edge-2"), encode(joined), retain=True)
        while not stop.is_set():
            try:
                task = await asyncio.wait_for(tasks.get(), 0.5)
            except TimeoutError:
                continue
            if not task.selects("edge-2"):
                continue
            chunks = split_vector(
                np.zeros(9610, np.float32), CodecSpec.parse("fp32"), max_payload=16384,
                job=job, sender="edge-2", role="update", round=task.round,
                version=task.version, num_samples=120,
            )  # fmt: skip
            await session.publish(topics.update("edge-2"), chunks[0])
            sent += 1
        await session.publish(topics.status("edge-2"), b"", retain=True)
    return sent


async def test_an_unfinished_update_misses_the_deadline_and_is_counted(amqtt_url: str) -> None:
    job = "unfinished"
    cloud = CloudNode(
        CloudConfig(broker=amqtt_url, job=job, clients=3, rounds=2, local_epochs=1,
                    round_timeout=3.0, quorum=0.5)
    )  # fmt: skip
    edges = [EdgeNode(EdgeConfig(broker=amqtt_url, node_id=f"edge-{i}", job=job)) for i in (0, 1)]
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        half = tg.create_task(_half_edge(amqtt_url, job, stop))
        for e in edges:
            tg.create_task(e.run())
        result = await cloud.run()
        stop.set()
    assert half.result() == 2
    for r in result.records:
        assert r.selected == ("edge-0", "edge-1", "edge-2")
        assert r.participants == ("edge-0", "edge-1")  # edge-2 never completed
        assert r.quorum_met and r.round_seconds >= 3.0  # waited out the deadline
        assert r.counters["accepted"] >= 3  # its one chunk was taken in, and is visible
    assert result.version == 2
