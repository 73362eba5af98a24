import numpy as np
import pytest

from fedmq.codec import CodecSpec, JobSpec, RoundTask, encode, split_vector
from fedmq.tinyml_profiles import LinkProfile, Profile
from fedmq.tinyml_profiles import mqtt_sizes as mq
from fedmq.tinyml_profiles.estimator import EdgePlan, Plan, estimate

pytestmark = pytest.mark.unit

JOB = JobSpec(
    job="j",
    model="m",
    dataset="d",
    partition="iid",
    clients=2,
    seed=0,
    codec="fp32",
    max_payload=4096,
    layout=(("w", (1000,)),),
)
SLOW = Profile(
    name="slow",
    description="",
    ram_bytes=1 << 20,
    flops=1e6,
    link=LinkProfile(up_bps=8000, down_bps=16000, rtt_ms=100),
)


def plan(edges: tuple[EdgePlan, ...], rounds: int = 3) -> Plan:
    return Plan(
        job=JOB,
        edges=edges,
        rounds=rounds,
        local_epochs=1,
        batch_size=8,
        lr=0.1,
        momentum=0.0,
        deadline_s=60,
        task_codec="fp32",
        downlink_codec="fp32",
        delta_codec="fp32",
        flops_per_sample=1000.0,
    )


def everyone(rnd: int, online: object) -> tuple[str, ...]:
    return tuple(sorted(online))  # type: ignore[call-overload]


def _model_and_task(rnd: int, selected: tuple[str, ...], model: np.ndarray) -> int:
    task = RoundTask(
        job="j",
        round=rnd,
        version=rnd - 1,
        selected=selected,
        deadline_s=60,
        local_epochs=1,
        batch_size=8,
        lr=0.1,
        momentum=0.0,
        codec="fp32",
    )
    pubs = split_vector(
        model,
        CodecSpec.parse("fp32"),
        max_payload=4096,
        job="j",
        sender="cloud",
        role="model" if rnd == 1 else "delta",  # round 1: the full model; then its changes
        round=rnd,
        version=rnd - 1,
    )
    assert len(pubs) > 1  # 4000 B of values over 4096 B messages with their headers
    kind = "model" if rnd == 1 else "delta"
    down = sum(mq.publish_size(f"fedmq/j/{kind}/{i}", len(p)) for i, p in enumerate(pubs))
    return down + mq.publish_size("fedmq/j/task", len(encode(task))), len(pubs)


def _update(node: str, n: int, rnd: int, model: np.ndarray) -> tuple[int, int]:
    pubs = split_vector(
        model,
        CodecSpec.parse("fp32"),
        max_payload=4096,
        job="j",
        sender=node,
        role="update",
        round=rnd,
        version=rnd - 1,
        num_samples=n,
        metrics={"loss": 0.0, "accuracy": 0.0, "seconds": 0.0},
    )
    return sum(mq.publish_size(f"fedmq/j/update/{node}", len(p)) for p in pubs), len(pubs)


def test_round_bytes_add_up_by_hand() -> None:
    edges = (EdgePlan("e0", 10, "fp32"), EdgePlan("e1", 20, "fp32"))
    model = np.zeros(1000, dtype=np.float32)
    est = estimate(
        plan(edges),
        full_model=model,
        changes=[model],
        deltas=[{e.node_id: model for e in edges}],
        select=everyone,
    )
    r2 = est.rounds[1]
    down, model_chunks = _model_and_task(2, ("e0", "e1"), model)
    up = acks_down = 0
    for node, n in (("e0", 10), ("e1", 20)):
        pub, chunks = _update(node, n, 2, model)
        up += pub + (model_chunks + 1) * mq.PUBACK  # acks for the model chunks and the task
        acks_down += chunks * mq.PUBACK
    assert r2.bytes_up == up
    assert r2.bytes_down == 2 * down + acks_down
    assert r2.naive_bytes == 2 * 4 * 1000
    assert est.bytes_up == est.setup_up + sum(r.bytes_up for r in est.rounds) + est.teardown_up


def test_time_bound_is_the_slowest_selected_edge() -> None:
    edges = (EdgePlan("fast", 10, "fp32"), EdgePlan("slow", 100, "fp32", SLOW))
    model = np.zeros(1000, dtype=np.float32)
    est = estimate(
        plan(edges, rounds=1),
        full_model=model,
        changes=[model],
        deltas=[{e.node_id: model for e in edges}],
        select=everyone,
    )
    r = est.rounds[0]
    assert r.slowest == "slow"
    down, _ = _model_and_task(1, ("fast", "slow"), model)
    up, _ = _update("slow", 100, 1, model)
    compute = 1000.0 * 100 / 1e6  # FLOPs per sample x samples x epochs / FLOP/s
    expected = compute + down * 8 / 16000 + up * 8 / 8000 + 0.1  # one RTT
    assert r.bound_seconds == pytest.approx(expected)


def test_sampling_is_replayed() -> None:
    edges = tuple(EdgePlan(f"e{i}", 10, "fp32") for i in range(4))
    rng = np.random.default_rng(3)
    picks: list[tuple[str, ...]] = []

    def half(rnd: int, online: object) -> tuple[str, ...]:
        pool = sorted(online)  # type: ignore[call-overload]
        chosen = tuple(sorted(rng.choice(pool, 2, replace=False)))
        picks.append(chosen)
        return chosen

    model = np.zeros(1000, dtype=np.float32)
    est = estimate(
        plan(edges),
        full_model=model,
        changes=[model],
        deltas=[{e.node_id: model for e in edges}],
        select=half,
    )
    assert [r.selected for r in est.rounds] == picks
    assert all(r.naive_bytes == 2 * 4000 for r in est.rounds)
