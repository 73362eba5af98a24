"""Per-edge downlink control bytes per round, measured at an edge's socket: the same at 10,
100 and 1,000 selected edges (issue 11: 339 B at 10 edges, 1,061 at 100, 1,691 at 170)."""

import asyncio
import dataclasses

import numpy as np
import pytest

from fedmq.cloud_node import CloudConfig, FedAvg
from fedmq.codec import encode
from fedmq.transport import Session, SessionConfig, Topics
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

ROUNDS = 5


async def control_bytes_per_round(url: str, fleet: int, mode: str) -> float:
    """What one edge's session receives per round on the edge's own subscriptions while a
    cloud-like publisher sends the tasks (and in chained mode the routes) of `fleet` edges."""
    topics = Topics("ctl")
    cfg = CloudConfig(broker=url, job="ctl", clients=fleet)
    ready = [f"edge-{i:04d}" for i in range(fleet)]  # same-length ids: only the fleet differs
    me = ready[0]
    got: list[str] = []
    edge_cfg = SessionConfig(
        url, f"ctl-{me}-{fleet}-{mode}",
        subscriptions=(topics.jobspec, topics.task, topics.delta_all, topics.control,
                       topics.chain(me)),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    async with (
        Session(SessionConfig(url, f"ctl-cloud-{fleet}-{mode}"), lambda t, p: None) as cloud,
        Session(edge_cfg, lambda t, p: got.append(t)) as edge,
    ):
        await asyncio.sleep(0.05)
        before = edge.meter.read().received
        for rnd in range(1, ROUNDS + 1):
            if mode == "sync":
                task = cfg.task(round=rnd, version=rnd - 1,
                                selected=FedAvg(fraction=0.5).select(rnd, ready, rng))  # fmt: skip
            else:
                task = cfg.task(round=rnd, version=rnd - 1, selected=tuple(ready), mode=mode)
            await cloud.publish(topics.task, encode(task), retain=True)
            if mode == "chain":  # each edge's route, on its own topic: we get only ours
                routes = [(topics.chain(a), encode(dataclasses.replace(task, next=b)))
                          for a, b in zip(ready, (*ready[1:], "cloud"), strict=True)]  # fmt: skip
                await cloud.publish_all(routes)
        expected = ROUNDS * (2 if mode == "chain" else 1)
        await wait_until(lambda: len(got) >= expected)
        await asyncio.sleep(0.1)  # any duplicate delivery would show here
        received = edge.meter.read().received - before
    await cloud_cleanup(url, topics)
    return received / ROUNDS


async def cloud_cleanup(url: str, topics: Topics) -> None:
    async with Session(SessionConfig(url, "ctl-clear"), lambda t, p: None) as s:
        await s.publish(topics.task, b"", retain=True)


@pytest.mark.parametrize("mode", ["sync", "async", "chain"])
async def test_control_bytes_per_edge_do_not_grow_with_the_fleet(amqtt_url: str, mode: str) -> None:
    per_round = {n: await control_bytes_per_round(amqtt_url, n, mode) for n in (10, 100, 1000)}
    base = per_round[10]
    assert base > 0
    for value in per_round.values():
        assert abs(value - base) <= 0.01 * base, per_round
