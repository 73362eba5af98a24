"""A valid identity that claims a huge sample weight cannot buy the aggregate (issue 12 item 1).

On a broker without ACLs or signatures anyone can publish on an edge's update topic; with them,
the edge's own credentials can. Either way the claim is bounded by what the edge declared when
it joined, so the forged update is rejected (`overweight`) and the genuine one counts.
"""

import asyncio

import numpy as np
import pytest

from fedmq.cloud_node import CloudConfig, CloudNode, RoundRecord
from fedmq.cloud_node.runtime import CloudResult
from fedmq.codec import CodecSpec, RoundTask, Status, decode, split_vector
from fedmq.edge_node import EdgeConfig, EdgeNode
from fedmq.transport import Session, SessionConfig, Topics

pytestmark = pytest.mark.integration


async def _claimer(
    url: str, job: str, victim: str, stop: asyncio.Event, *, honest_weight: bool = False
) -> list[int]:
    """On every task, publishes first a well-formed update in `victim`'s name with values that
    wreck the model if counted (yet under the value bound), claiming 10^7 samples or, with
    `honest_weight`, exactly what the victim declared (read from its retained status)."""
    topics = Topics(job)
    tasks: asyncio.Queue[RoundTask] = asyncio.Queue()
    sent: list[int] = []
    declared = [10_000_000]

    def on_message(topic: str, payload: bytes) -> None:
        if topic == topics.task and payload:
            tasks.put_nowait(decode(payload, expect=RoundTask))
        elif topic == topics.status(victim) and payload and honest_weight:
            status = decode(payload, expect=Status)
            if status.num_samples:
                declared[0] = status.num_samples

    cfg = SessionConfig(
        url=url, client_id="claimer", subscriptions=(topics.task, topics.status(victim))
    )
    async with Session(cfg, on_message) as session:
        while not stop.is_set():
            try:
                task = await asyncio.wait_for(tasks.get(), 0.5)
            except TimeoutError:
                continue
            wreck = np.full(9610, 1000.0, dtype=np.float32)
            payloads = split_vector(
                wreck, CodecSpec.parse("fp32"), max_payload=131072, job=job, sender=victim,
                role="update", round=task.round, version=task.version, num_samples=declared[0],
            )  # fmt: skip
            await session.publish_all([(topics.update(victim), p) for p in payloads])
            sent.append(task.round)
    return sent


async def _attacked_run(
    url: str, job: str, *, honest_weight: bool, norm_screen: float = 10.0
) -> tuple[list[RoundRecord], CloudResult]:
    """3 edges, 3 rounds, the claimer on edge-0 (which trains slowly: the forged copy of its
    update is always in first)."""
    cloud = CloudNode(
        CloudConfig(broker=url, job=job, clients=3, rounds=3, local_epochs=1,
                    norm_screen=norm_screen)
    )  # fmt: skip
    edges = [
        EdgeNode(EdgeConfig(broker=url, node_id=f"edge-{i}", job=job,
                            compute_flops=2e7 if i == 0 else 0.0))
        for i in range(3)
    ]  # fmt: skip
    stop = asyncio.Event()
    records: list[RoundRecord] = []
    async with asyncio.TaskGroup() as tg:
        claimer = tg.create_task(_claimer(url, job, "edge-0", stop, honest_weight=honest_weight))
        await asyncio.sleep(0.5)
        for e in edges:
            tg.create_task(e.run())
        result = await cloud.run(on_round=records.append)
        stop.set()
    assert claimer.result(), "the claimer never saw a task"
    return records, result


async def test_a_huge_claimed_weight_is_rejected_and_the_genuine_update_counts(
    broker_url: str,
) -> None:
    records, result = await _attacked_run(broker_url, "claims", honest_weight=False)
    assert all(r.counters["overweight"] >= 1 for r in records), [r.counters for r in records]
    # The forged copy came first and was not counted, so the genuine update still was.
    assert all(r.participants == ("edge-0", "edge-1", "edge-2") for r in records)
    assert float(np.abs(result.final_flat).max()) < 10.0  # 1000s with 10^7 weight: ~1000
    assert result.final_accuracy > 0.5


async def test_an_update_within_its_weight_but_far_too_large_is_clipped(broker_url: str) -> None:
    """The same attack with the victim's own declared weight: not overweight, under the value
    bound, so only the norm screen (on by default, whatever the strategy) bounds it. A third of
    the weight in one malicious direction still hurts plain FedAvg (a robust --strategy is the
    answer to that); what the screen guarantees is the size of the damage."""
    screened, result = await _attacked_run(broker_url, "clipped", honest_weight=True)
    assert all(r.counters["overweight"] == 0 for r in screened)  # the weight was honest
    assert all(r.counters["clipped"] >= 1 for r in screened), [r.counters for r in screened]
    assert float(np.abs(result.final_flat).max()) < 10.0
    unscreened, bare = await _attacked_run(
        broker_url, "unclipped", honest_weight=True, norm_screen=0.0
    )
    assert all(r.counters["clipped"] == 0 for r in unscreened)
    # 1000s at a third of the weight: ~300 everywhere
    assert float(np.abs(bare.final_flat).max()) > 100.0
