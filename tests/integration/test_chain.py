"""Chained mode over a real broker: the model visits every edge in order; a dead one is skipped."""

import asyncio

import pytest

from fedmq.cloud_node import CloudConfig, CloudNode
from fedmq.codec import Status, encode
from fedmq.edge_node import EdgeConfig, EdgeNode
from fedmq.transport import Session, SessionConfig, Topics

pytestmark = pytest.mark.integration


def _cloud(url: str, job: str, rounds: int) -> CloudNode:
    return CloudNode(
        CloudConfig(broker=url, job=job, clients=3, rounds=rounds, local_epochs=1,
                    mode="chain", round_timeout=4.0)
    )  # fmt: skip


async def test_the_model_visits_every_edge_in_order(broker_url: str) -> None:
    cloud = _cloud(broker_url, "chain", rounds=2)
    edges = [EdgeNode(EdgeConfig(broker=broker_url, node_id=f"edge-{i}", job="chain"))
             for i in range(3)]  # fmt: skip
    async with asyncio.TaskGroup() as tg:
        for e in edges:
            tg.create_task(e.run())
        result = await cloud.run()
    for record in result.records:
        assert record.participants == record.selected == ("edge-0", "edge-1", "edge-2")
        hops = record.client_metrics
        assert [hops[e]["hop"] for e in record.selected] == [1, 2, 3]
        at = [hops[e]["at"] for e in record.selected]
        assert at == sorted(at)  # the cloud saw each hop as it passed, in order
    assert [e.rounds_trained for e in edges] == [2, 2, 2]
    # The cloud's model is the last hop's: trained on every shard in turn.
    assert result.final_accuracy > 0.5


async def test_a_dead_edge_in_the_chain_is_skipped_after_the_timeout(broker_url: str) -> None:
    job, topics = "chain-dead", Topics("chain-dead")
    # edge-1 joined, then died where its last will has not fired yet: it is named in the order.
    zombie = SessionConfig(url=broker_url, client_id="zombie")
    joined = Status(job=job, sender="edge-1", role="edge", online=True, num_samples=150)
    edges = [EdgeNode(EdgeConfig(broker=broker_url, node_id=f"edge-{i}", job=job))
             for i in (0, 2)]  # fmt: skip
    cloud = _cloud(broker_url, job, rounds=2)
    async with Session(zombie, lambda t, p: None) as session:
        await session.publish(topics.status("edge-1"), encode(joined), retain=True)
        try:
            async with asyncio.TaskGroup() as tg:
                for e in edges:
                    tg.create_task(e.run())
                result = await cloud.run()
        finally:
            await session.publish(topics.status("edge-1"), b"", retain=True)
    for record in result.records:
        assert record.selected == ("edge-0", "edge-1", "edge-2")
        assert record.participants == ("edge-0", "edge-2")  # the chain went on past edge-1
        assert record.counters["skipped"] == 1
        assert record.client_metrics["edge-2"]["hop"] == 3
        assert record.client_metrics["edge-2"]["at"] >= 4.0  # after edge-1's timeout
    assert [e.rounds_trained for e in edges] == [2, 2]
