"""Chained mode: an edge that presence reports gone is skipped at once, not after the timeout."""

import asyncio

import pytest

from fedmq.cloud_node import CloudConfig, CloudNode
from fedmq.codec import Status, encode
from fedmq.edge_node import EdgeConfig, EdgeNode
from fedmq.transport import Session, SessionConfig, Topics

pytestmark = pytest.mark.integration

HOP_TIMEOUT = 30.0  # the test fails long before this if the departure is not acted on


async def test_a_chained_edge_that_leaves_is_skipped_at_once(broker_url: str) -> None:
    job, topics = "chain-leave", Topics("chain-leave")
    # edge-1 is a stand-in that joined and, once the model is on its way to it, says goodbye.
    joined = Status(job=job, sender="edge-1", role="edge", online=True, num_samples=150)
    gone = Status(job=job, sender="edge-1", role="edge", online=False)
    model_for_edge_1 = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        if topic == topics.chain("edge-1") and payload:
            model_for_edge_1.set()

    stand_in = SessionConfig(
        url=broker_url, client_id="stand-in", subscriptions=(topics.chain("edge-1"),)
    )
    edges = [EdgeNode(EdgeConfig(broker=broker_url, node_id=f"edge-{i}", job=job))
             for i in (0, 2)]  # fmt: skip
    cloud = CloudNode(
        CloudConfig(broker=broker_url, job=job, clients=3, rounds=2, local_epochs=1,
                    mode="chain", round_timeout=HOP_TIMEOUT)
    )  # fmt: skip

    async with Session(stand_in, on_message) as session:
        await session.publish(topics.status("edge-1"), encode(joined), retain=True)

        async def leave() -> float:
            await model_for_edge_1.wait()
            await session.publish(topics.status("edge-1"), encode(gone), retain=True)
            return asyncio.get_running_loop().time()

        try:
            async with asyncio.TaskGroup() as tg:
                for e in edges:
                    tg.create_task(e.run())
                leaving = tg.create_task(leave())
                result = await cloud.run()
        finally:
            await session.publish(topics.status("edge-1"), b"", retain=True)
    assert leaving.done()
    first, second = result.records
    assert first.selected == ("edge-0", "edge-1", "edge-2")
    assert first.participants == ("edge-0", "edge-2") and first.counters["skipped"] == 1
    # edge-2 got the model right after edge-1 left: nowhere near the hop timeout.
    assert first.client_metrics["edge-2"]["at"] < 10.0 < HOP_TIMEOUT
    assert first.seconds < 15.0
    # Gone from presence, edge-1 is not in the next pass's order at all.
    assert second.selected == second.participants == ("edge-0", "edge-2")
