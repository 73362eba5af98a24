import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedmq.cli import memo
from fedmq.cli.config import RunConfig
from fedmq.cli.hostspeed import host_speed
from fedmq.cli.planning import prepare, rounds_ahead
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


def _model_and_task(rnd: int, selected: tuple[str, ...], model: np.ndarray) -> tuple[int, int]:
    task = RoundTask(
        job="j",
        round=rnd,
        version=rnd - 1,
        salt=bytes(8),
        threshold=bytes(8),  # 8 bytes whoever is selected: any value sizes the task
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


def _plan(edges: tuple[EdgePlan, ...], rounds: int, mode: str) -> Plan:
    return dataclasses.replace(plan(edges, rounds=rounds), mode=mode)


def test_async_counts_every_task_and_the_updates_in_flight_at_the_end() -> None:
    """FedBuff: one task more than steps, each naming every online edge, and one update per
    edge after the last step; the steps themselves take K updates each."""
    edges = tuple(EdgePlan(f"e{i}", 10, "fp32") for i in range(3))
    model = np.zeros(1000, dtype=np.float32)
    kwargs = dict(full_model=model, changes=[model], deltas=[{e.node_id: model for e in edges}])

    def one(rnd: int, online: object) -> tuple[str, ...]:
        return (sorted(online)[(rnd - 1) % 3],)  # type: ignore[call-overload]

    sync = estimate(_plan(edges, 2, "sync"), select=one, **kwargs)  # type: ignore[arg-type]
    fedbuff = estimate(_plan(edges, 2, "async"), select=one, **kwargs)  # type: ignore[arg-type]
    pub, chunks = _update("e0", 10, 3, model)
    # Updates in flight: one per edge (with the ack each gets back), and the last task.
    task = RoundTask(job="j", round=3, version=2, salt=bytes(8), threshold=bytes(8),
                     deadline_s=60, local_epochs=1, batch_size=8, lr=0.1, momentum=0.0,
                     codec="fp32", mode="async")  # fmt: skip
    task_pub = mq.publish_size("fedmq/j/task", len(encode(task)))
    assert fedbuff.teardown_up - sync.teardown_up == 3 * (pub + mq.PUBACK)
    assert fedbuff.teardown_down - sync.teardown_down == 3 * (task_pub + chunks * mq.PUBACK)
    # An async task selects every edge, a sync task here one: the same salt and threshold
    # bytes, so only the mode's text ("async" against "sync") differs.
    named = len(encode(dataclasses.replace(task, round=1, version=0)))
    alone = len(encode(dataclasses.replace(task, round=1, version=0, mode="sync")))
    assert named - alone == 1
    assert fedbuff.rounds[0].bytes_down - sync.rounds[0].bytes_down == 3 * (
        mq.publish_size("fedmq/j/task", named) - mq.publish_size("fedmq/j/task", alone)
    )


def test_chain_hops_are_sized_from_the_passes_run_ahead() -> None:
    """A trained model compresses worse than the initial one: each hop is sized from the model
    actually handed on in that pass, and the last pass stands in for later ones."""
    edges = (EdgePlan("e0", 10, "fp32+zstd"), EdgePlan("e1", 10, "fp32+zstd"))
    zeros = np.zeros(1000, dtype=np.float32)
    noise = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    p = dataclasses.replace(_plan(edges, 3, "chain"), downlink_codec="fp32+zstd")
    flat = estimate(p, full_model=zeros, changes=[], deltas=[], select=everyone)
    trained = estimate(
        p, full_model=zeros, changes=[], deltas=[], select=everyone,
        hops=[[zeros, zeros, zeros], [zeros, noise, noise]],
    )  # fmt: skip
    assert trained.rounds[0].bytes_up == flat.rounds[0].bytes_up  # pass 1: all zeros
    assert trained.rounds[1].bytes_up > flat.rounds[1].bytes_up + 2000  # pass 2: noise
    assert trained.rounds[2].bytes_up == trained.rounds[1].bytes_up  # pass 3 reuses pass 2
    # The final model is re-published on model/+ for serving nodes; a chain's edges never
    # subscribe to it (their models come on chain/<edge>), so it costs them nothing.
    assert trained.teardown_down == flat.teardown_down


def test_first_round_and_steady_state_are_apart() -> None:
    edges = (EdgePlan("e0", 10, "fp32"), EdgePlan("e1", 20, "fp32"))
    model = np.zeros(1000, dtype=np.float32)
    small = np.zeros(10, dtype=np.float32)
    est = estimate(
        dataclasses.replace(plan(edges, rounds=3), delta_codec="fp32+zstd"),
        full_model=model, changes=[model], deltas=[{e.node_id: small for e in edges}],
        select=everyone,
    )  # fmt: skip
    _, down, _ = est.steady_round()
    assert est.first_round().bytes_down > 2 * down  # the whole model vs its (zero) change
    assert down == (est.rounds[1].bytes_down + est.rounds[2].bytes_down) / 2
    assert est.as_dict()["steady_round"]["bytes_down"] == down
    assert est.as_dict()["first_round"]["bytes_up"] == est.rounds[0].bytes_up


def test_host_speed_is_measured_once_and_read_back(tmp_path: Path) -> None:
    calls: list[int] = []

    def measure() -> float:
        calls.append(1)
        return 2.5e9

    first = host_speed("mlp", (64,), 32, measure, directory=tmp_path)
    again = host_speed("mlp", (64,), 32, measure, directory=tmp_path)
    assert calls == [1] and first == again and first.flops == 2.5e9
    assert first.describe() == again.describe() and str(tmp_path) in first.describe()
    host_speed("cnn", (1, 8, 8), 32, measure, directory=tmp_path)  # another workload: a miss
    assert len(calls) == 2
    host_speed("mlp", (64,), 32, measure, directory=tmp_path, recalibrate=True)
    assert len(calls) == 3


def test_given_host_speed_never_measures(tmp_path: Path) -> None:
    def measure() -> float:
        raise AssertionError("calibrated although the figure was given")

    speed = host_speed("mlp", (64,), 32, measure, given=1e9, directory=tmp_path)
    assert speed.flops == 1e9 and speed.source == "flag"
    assert not any(tmp_path.iterdir())


def test_estimate_round_trips_through_the_memo(tmp_path: Path) -> None:
    edges = (EdgePlan("e0", 10, "fp32"), EdgePlan("e1", 20, "fp32"))
    model = np.zeros(1000, dtype=np.float32)
    est = estimate(
        plan(edges), full_model=model, changes=[model],
        deltas=[{e.node_id: model for e in edges}], select=everyone,
    )  # fmt: skip
    key = memo.memo_key({"config": {"rounds": 3}})
    assert memo.load(key, tmp_path) is None
    memo.store(key, est, tmp_path)
    assert memo.load(key, tmp_path) == est
    assert memo.load(memo.memo_key({"config": {"rounds": 4}}), tmp_path) is None


def test_the_default_run_is_run_ahead_whole_and_a_heavy_one_only_sampled() -> None:
    """A FLOP budget, not a clock, decides: the same config always runs the same rounds ahead."""
    assert rounds_ahead(prepare(RunConfig())) == 30  # MLP, 30 rounds: 8.7e9 FLOPs
    assert rounds_ahead(prepare(RunConfig(rounds=2))) == 2
    assert rounds_ahead(prepare(RunConfig(model="cnn", sample_rounds=3))) == 3  # 1.4e10 a round
