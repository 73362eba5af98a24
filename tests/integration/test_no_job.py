"""An edge started before any cloud says, once, that no job is published and waits for it."""

import asyncio
import logging

import pytest

from fedmq.edge_node import EdgeConfig, EdgeNode

pytestmark = pytest.mark.integration


async def test_an_edge_without_a_job_says_so_and_keeps_waiting(
    amqtt_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    edge = EdgeNode(EdgeConfig(broker=amqtt_url, node_id="edge-0", job="nobody", resync_s=0.2))
    with caplog.at_level(logging.WARNING, logger="fedmq.edge_node.runtime"):
        task = asyncio.create_task(edge.run())
        try:
            for _ in range(100):  # the first resync comes after 0.2 s of silence
                if edge.resyncs >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    said = [r.getMessage() for r in caplog.records if "no job published yet" in r.getMessage()]
    assert said == [
        "edge-0: no job published yet on fedmq/nobody/job; waiting (is a cloud running with "
        "--job nobody on this broker?)"
    ]  # once, however long it waits
    assert edge.resyncs >= 2 and edge.rounds_trained == 0
