"""Everything decided before a run starts: the fleet, its checks, and the traffic estimate.

`fedmq run` and `fedmq estimate` share it, so the estimate printed before a run is the one the
run is compared against afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedmq.cli.config import RunConfig
from fedmq.cloud_node import FedAvg
from fedmq.codec import MIN_PAYLOAD, JobSpec
from fedmq.errors import ConfigError
from fedmq.tinyml_profiles import Profile, format_bytes, parse_fleet
from fedmq.tinyml_profiles.estimator import EdgePlan, Estimate, Plan, estimate
from fedmq.workloads import (
    Dataset,
    PartitionSpec,
    TrainConfig,
    TrainingCost,
    build_model,
    derive_seed,
    get_flat,
    layout,
    load_dataset,
    partition,
    train_local,
    training_cost,
)

DEFAULT_CODEC = "fp32+zstd"


@dataclass(frozen=True)
class Setup:
    cfg: RunConfig  # with clients and max_payload resolved from the fleet
    train: Dataset
    test: Dataset
    shards: list[np.ndarray]
    profiles: list[Profile | None]
    codecs: list[str]  # uplink codec per edge
    cost: TrainingCost

    @property
    def task_codec(self) -> str:
        return self.cfg.codec or DEFAULT_CODEC

    def edge_id(self, i: int) -> str:
        return f"edge-{i}"


def keepalive_for(profile: Profile | None, max_payload: int) -> int:
    """One packet must cross the link well inside the broker's 1.5 x keepalive."""
    if profile is None:
        return 20
    link = profile.link
    one_packet = max_payload * 8 / min(link.up_bps, link.down_bps) + link.rtt_ms / 1000
    return int(min(65535, max(20, math.ceil(3 * one_packet))))


def prepare(cfg: RunConfig) -> Setup:
    profiles: list[Profile | None]
    if cfg.fleet:
        fleet = parse_fleet(cfg.fleet)
        profiles = list(fleet)
        for p in fleet:
            if p.link.max_payload < MIN_PAYLOAD:
                raise ConfigError(
                    f"profile {p.name}: its link carries at most {p.link.max_payload} B per "
                    f"message, below the {MIN_PAYLOAD} B a fedmq chunk needs (header included)"
                )
        smallest = min(p.link.max_payload for p in fleet)
        cfg = replace(cfg, clients=len(fleet), max_payload=min(cfg.max_payload, smallest))
    else:
        profiles = [None] * cfg.clients
    train, test = load_dataset(cfg.dataset, seed=cfg.seed, test_fraction=cfg.test_fraction)
    cost = training_cost(cfg.model, train.x.shape[1], train.num_classes, train.feature_shape)
    for p in {p.name: p for p in profiles if p is not None}.values():
        need = cost.memory_bytes(cfg.batch_size, momentum=cfg.momentum > 0)
        if need > p.ram_bytes:
            raise ConfigError(
                f"profile {p.name}: model {cfg.model} ({cost.params:,} parameters) needs "
                f"{format_bytes(need)} to train (weights, gradients, momentum, the global copy "
                f"and batch-{cfg.batch_size} activations) but the device has "
                f"{format_bytes(p.ram_bytes)}"
            )
    shards = partition(train.y, cfg.clients, PartitionSpec.parse(cfg.partition), seed=cfg.seed)
    codecs = [cfg.codec or (p.codec if p is not None else DEFAULT_CODEC) for p in profiles]
    return Setup(cfg, train, test, shards, profiles, codecs, cost)


def job_spec(setup: Setup) -> JobSpec:
    cfg = setup.cfg
    model = build_model(
        cfg.model,
        num_features=setup.train.x.shape[1],
        num_classes=setup.train.num_classes,
        feature_shape=setup.train.feature_shape,
        seed=cfg.seed,
    )
    return JobSpec(
        job=cfg.job,
        model=cfg.model,
        dataset=cfg.dataset,
        partition=cfg.partition,
        clients=cfg.clients,
        seed=cfg.seed,
        codec=setup.task_codec,
        max_payload=cfg.max_payload,
        layout=layout(model),
    )


def plan_estimate(setup: Setup, round_timeout: float) -> Estimate:
    cfg = setup.cfg
    train = setup.train
    model = build_model(
        cfg.model,
        num_features=train.x.shape[1],
        num_classes=train.num_classes,
        feature_shape=train.feature_shape,
        seed=cfg.seed,
    )
    initial = get_flat(model)
    tcfg = TrainConfig(
        local_epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum
    )
    # The first rounds of the real workload, run ahead in-process (no run is measured): their
    # updates and models teach the estimator how the codecs compress as training proceeds.
    host_seconds = host_flops = 0.0
    models, deltas = [initial], []
    for rnd in range(1, min(cfg.rounds, cfg.sample_rounds) + 1):
        base, updates = models[-1], {}
        total, weighted = 0, np.zeros_like(base, dtype=np.float64)
        for i, shard in enumerate(setup.shards):
            result = train_local(
                cfg.model, base, train.subset(shard), tcfg, seed=derive_seed(cfg.seed, rnd, i)
            )
            updates[setup.edge_id(i)] = result.flat - base
            weighted += result.num_samples * updates[setup.edge_id(i)]
            total += result.num_samples
            host_seconds += result.seconds
            host_flops += setup.cost.flops_per_sample * result.num_samples * cfg.local_epochs
        deltas.append(updates)
        models.append((base + weighted / max(total, 1)).astype(np.float32))
    edges = tuple(
        EdgePlan(setup.edge_id(i), len(setup.shards[i]), setup.codecs[i], setup.profiles[i])
        for i in range(cfg.clients)
    )
    plan = Plan(
        job=job_spec(setup),
        edges=edges,
        rounds=cfg.rounds,
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        deadline_s=round_timeout,
        task_codec=setup.task_codec,
        downlink_codec=cfg.downlink_codec,
        flops_per_sample=setup.cost.flops_per_sample,
        host_flops=host_flops / max(host_seconds, 1e-9),
    )
    strategy = FedAvg(fraction=cfg.fraction, min_clients=cfg.min_fit)
    rng = np.random.default_rng(cfg.seed)  # the cloud's sampling, replayed

    def select(rnd: int, online: Sequence[str]) -> tuple[str, ...]:
        return strategy.select(rnd, list(online), rng)

    return estimate(plan, models=models[: len(deltas)], deltas=deltas, select=select)


def round_timeout_for(setup: Setup, est: Estimate | None) -> float:
    """The configured deadline, stretched for slow fleets so a round can finish at all."""
    if est is None or not est.rounds:
        return setup.cfg.round_timeout
    slowest = max(r.bound_seconds for r in est.rounds)
    return max(setup.cfg.round_timeout, 3 * slowest + 30)
