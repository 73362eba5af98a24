"""An edge that joins mid-run starts from the current model, not from the beginning."""

import asyncio

import pytest

from fedmq.cloud_node import CloudConfig, CloudNode, RoundRecord
from fedmq.edge_node import EdgeConfig, EdgeNode

pytestmark = pytest.mark.integration


async def test_a_late_edge_trains_from_the_current_version(broker_url: str) -> None:
    cloud = CloudNode(
        CloudConfig(
            broker=broker_url,
            job="join",
            clients=3,
            min_clients=2,
            rounds=12,
            local_epochs=1,
            round_timeout=30,
        )
    )

    # Slowed to ~0.3 s a round so the late edge lands mid-run.
    def edge(i: int) -> EdgeNode:
        return EdgeNode(
            EdgeConfig(broker=broker_url, node_id=f"edge-{i}", job="join", compute_flops=2e7)
        )

    early, late = [edge(0), edge(1)], edge(2)
    fifth = asyncio.Event()
    records: list[RoundRecord] = []

    def on_round(record: RoundRecord) -> None:
        records.append(record)
        if record.round == 5:
            fifth.set()

    async with asyncio.TaskGroup() as tg:
        for e in early:
            tg.create_task(e.run())
        run = tg.create_task(cloud.run(on_round=on_round))
        await fifth.wait()
        joined = tg.create_task(late.run())
        result = await run
        await asyncio.wait_for(joined, 30)
    assert len(result.records) == 12
    assert late.first_update_version is not None and late.first_update_version >= 5
    assert any("edge-2" in r.participants for r in records if r.round > 5)
    assert all("edge-2" not in r.participants for r in records if r.round <= 5)
