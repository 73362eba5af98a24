"""Everything decided before a run starts: the fleet, its checks, and the traffic estimate.

`fedmq run` and `fedmq estimate` share it, so the estimate printed before a run is the one the
run is compared against afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from fedmq.cli import memo
from fedmq.cli.config import FIELDS, RunConfig
from fedmq.cli.hostspeed import HostSpeed, host_speed
from fedmq.cloud_node import (
    CloudConfig,
    FedAvg,
    Krum,
    Median,
    NormClip,
    Strategy,
    TrimmedMean,
)
from fedmq.cloud_node.fedadagrad import FedAdagrad
from fedmq.cloud_node.fedadam import FedAdam
from fedmq.cloud_node.fedavgm import FedAvgM
from fedmq.cloud_node.fedyogi import FedYogi
from fedmq.cloud_node.serveropt import ServerOptimizer, ServerOptStrategy, ServerSGD
from fedmq.cloud_node.sparse import SparseFedAvg
from fedmq.codec import ALIGN, MIN_PAYLOAD, CodecSpec, ErrorFeedback, JobSpec, split_vector
from fedmq.errors import ConfigError
from fedmq.tinyml_profiles import Profile, format_bytes, parse_fleet
from fedmq.tinyml_profiles.estimator import EdgePlan, Estimate, Plan, estimate
from fedmq.workloads import (
    Dataset,
    DriftSpec,
    PartitionSpec,
    TrainConfig,
    TrainingCost,
    build_model,
    data_for_round,
    derive_seed,
    get_flat,
    head,
    layout,
    load_dataset,
    partition,
    set_flat,
    train_local,
    training_cost,
)
from fedmq.workloads.cost import measure_training_speed
from fedmq.workloads.data import DATASETS, stratified_split
from fedmq.workloads.split import Split, load_init_weights, load_split

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
    trains: list[str]  # per edge: "all", or "head" (trains and sends only the last layer)

    def head_start(self, i: int, layout: LayoutT) -> int:
        """Where edge i's updates start: 0, or its head's first aligned block."""
        if self.trains[i] != "head" or self.cfg.mode != "sync":
            return 0
        start = head(layout)[0]
        return start - start % ALIGN

    @property
    def task_codec(self) -> str:
        return self.cfg.codec or DEFAULT_CODEC

    def edge_id(self, i: int) -> str:
        return f"edge-{i}"


LayoutT = tuple[tuple[str, tuple[int, ...]], ...]


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
    given = load_split(cfg.split) if cfg.split else None
    if given is not None:  # another framework's exact work: its edges, its test set
        cfg = replace(cfg, clients=len(given.edges))
        profiles = [None] * cfg.clients
        train = DATASETS[cfg.dataset]()  # every sample: the split indexes the whole dataset
        given.check(len(train), cfg.clients)
        test = train.subset(given.test)
    else:
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
    if given is not None:
        shards = [np.asarray(e, dtype=np.int64) for e in given.edges]
    else:
        shards = partition(train.y, cfg.clients, PartitionSpec.parse(cfg.partition), seed=cfg.seed)
    codecs = [cfg.codec or (p.codec if p is not None else DEFAULT_CODEC) for p in profiles]
    heads = len(profiles) - cfg.head_only
    trains = [
        "head" if i >= heads or (p is not None and p.train == "head") else "all"
        for i, p in enumerate(profiles)
    ]
    setup = Setup(cfg, train, test, shards, profiles, codecs, cost, trains)
    if cfg.init_weights:
        initial_model(setup)  # a file that does not fit the model fails here, before any banner
    return setup


def initial_model(setup: Setup) -> torch.nn.Module:
    """The model the cloud starts from: same name, data shape and seed, so the same weights."""
    train = setup.train
    model = build_model(
        setup.cfg.model,
        num_features=train.x.shape[1],
        num_classes=train.num_classes,
        feature_shape=train.feature_shape,
        seed=setup.cfg.seed,
    )
    if setup.cfg.init_weights:  # as the cloud starts from them (CloudConfig.init_weights)
        set_flat(model, load_init_weights(setup.cfg.init_weights, layout(model)))
    return model


def run_split(setup: Setup) -> Split:
    """The split a run uses, as indices into the whole dataset: --split's, or fedmq's own
    seeded test split and partition (`--save-split` writes it, to rerun the same work)."""
    cfg = setup.cfg
    if cfg.split:
        return load_split(cfg.split)
    full = DATASETS[cfg.dataset]()
    train_idx, test_idx = stratified_split(full.y, cfg.test_fraction, cfg.seed)
    return Split(
        edges=tuple(np.asarray(train_idx)[s].astype(np.int64) for s in setup.shards),
        test=np.asarray(test_idx, dtype=np.int64),
    )


def cloud_config(cfg: RunConfig, broker: str, **overrides: Any) -> CloudConfig:
    """The cloud's config: every setting it shares with the run config, plus `overrides`."""
    shared = {
        f.name: getattr(cfg, f.name)
        for f in fields(CloudConfig)
        if f.name in FIELDS and f.name != "broker"
    }
    shared["codec"] = cfg.codec or DEFAULT_CODEC
    return CloudConfig(broker=broker, **{**shared, **overrides})


def job_spec(setup: Setup, model: torch.nn.Module) -> JobSpec:
    """The JobSpec the cloud will publish, byte for byte: the cloud's own."""
    cloud = cloud_config(setup.cfg, "", codec=setup.task_codec)
    return cloud.job_spec(layout(model))


# Training FLOPs the estimate may spend running the workload ahead. Codecs that compress
# (zstd, top-k) size each round differently as training converges, and only running a round
# tells by how much: reusing round 3's sizes for 30 rounds missed by 4% (fp32+zstd up) to 16%
# (top-k's downlink). The default MLP run (30 rounds, 8.7e9 FLOPs) fits; past the budget the
# last sampled round stands in for the rest. A FLOP count, not a time, so the estimate stays a
# pure function of its inputs.
AHEAD_FLOPS = 1e10


def rounds_ahead(setup: Setup) -> int:
    """How many rounds the estimate runs in-process: all that fit the budget, at least
    `sample_rounds`, at most `rounds`."""
    cfg = setup.cfg
    per_round = setup.cost.flops_per_sample * len(setup.train) * cfg.local_epochs
    fit = int(AHEAD_FLOPS // per_round) if per_round > 0 else cfg.rounds
    return max(1, min(cfg.rounds, max(cfg.sample_rounds, fit)))


def resolve_host_speed(
    setup: Setup, *, given: float | None = None, recalibrate: bool = False
) -> HostSpeed:
    """This machine's training speed for the run's model: given, cached, or calibrated once."""
    cfg, train = setup.cfg, setup.train
    return host_speed(
        cfg.model,
        train.feature_shape,
        cfg.batch_size,
        lambda: measure_training_speed(cfg.model, train, batch_size=cfg.batch_size),
        given=given,
        recalibrate=recalibrate,
    )


def plan_estimate(setup: Setup, round_timeout: float, host: HostSpeed | None = None) -> Estimate:
    """The run's traffic and time, before it starts. `host` defaults to the cached host speed
    (calibrated on the first call on this machine)."""
    cfg = setup.cfg
    if host is None:
        host = resolve_host_speed(setup)
    key = memo.memo_key(
        {"config": {k: v for k, v in cfg.as_dict().items() if k not in ("out", "broker")},
         "profiles": [repr(p) for p in setup.profiles],
         "host_flops": host.flops, "round_timeout": round_timeout}
    )  # fmt: skip
    known = memo.load(key)
    if known is not None:
        return known
    est = _plan_estimate(setup, round_timeout, host)
    memo.store(key, est)
    return est


def _plan_estimate(setup: Setup, round_timeout: float, host: HostSpeed) -> Estimate:
    cfg = setup.cfg
    model = initial_model(setup)
    initial = get_flat(model)
    tcfg = TrainConfig(
        local_epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        momentum=cfg.momentum, prox_mu=cfg.prox_mu,
    )  # fmt: skip
    sample = (_chain_ahead if cfg.mode == "chain" else _run_ahead)(setup, initial, tcfg)
    spec_layout = layout(model)
    edges = tuple(
        EdgePlan(setup.edge_id(i), len(setup.shards[i]), setup.codecs[i], setup.profiles[i],
                 start=setup.head_start(i, spec_layout))
        for i in range(cfg.clients)
    )  # fmt: skip
    plan = Plan(
        job=job_spec(setup, model),
        edges=edges,
        rounds=cfg.rounds,
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        deadline_s=round_timeout,
        task_codec=setup.task_codec,
        downlink_codec=cfg.downlink_codec,
        delta_codec=cfg.delta_codec,
        flops_per_sample=setup.cost.flops_per_sample,
        host_flops=host.flops,
        mode=cfg.mode,
        prox_mu=cfg.prox_mu,
    )
    strategy = make_strategy(cfg)  # the cloud's own rule, so its own sampling
    rng = np.random.default_rng(cfg.seed)  # the cloud's sampling, replayed

    def select(rnd: int, online: Sequence[str]) -> tuple[str, ...]:
        if cfg.mode == "async":
            return _fedbuff_pick(cfg, rnd, online)
        return strategy.select(rnd, list(online), rng)

    return estimate(
        plan,
        full_model=sample.full_model,
        changes=sample.changes,
        deltas=sample.sent,
        select=select,
        hops=sample.hops,
    )


def _fedbuff_pick(cfg: RunConfig, step: int, online: Sequence[str]) -> tuple[str, ...]:
    """Whose updates make FedBuff step `step`: K of them, taking turns (whoever is free)."""
    pool, k = sorted(online), min(cfg.buffer_size, len(online))
    first = (step - 1) * k
    return tuple(sorted(pool[(first + i) % len(pool)] for i in range(k)))


@dataclass
class _Sample:
    full_model: np.ndarray  # what joining edges download in round 1
    changes: list[np.ndarray]  # the model change sent to every edge, rounds 2, 3, ...
    sent: list[dict[str, np.ndarray]]  # what each edge encodes, rounds 1, 2, ...
    hops: list[list[np.ndarray]] = field(default_factory=list)  # chain: models handed on


def _edge_data(setup: Setup, i: int, rnd: int) -> Dataset:
    """Edge i's samples in round `rnd`, drift included, as the edge computes them."""
    cfg = setup.cfg
    data = setup.train.subset(setup.shards[i])
    if cfg.drift == "none":
        return data
    return data_for_round(
        data, DriftSpec.parse(cfg.drift), round=min(rnd, cfg.rounds), rounds=cfg.rounds,
        seed=derive_seed(cfg.seed, i),
    )  # fmt: skip


def _chain_ahead(setup: Setup, initial: np.ndarray, tcfg: TrainConfig) -> _Sample:
    """Chained passes, in-process: each edge (in the cloud's order) trains what the one before
    it handed on; what is handed on is the trained model in the downlink codec."""
    cfg = setup.cfg
    order = sorted(range(cfg.clients), key=setup.edge_id)  # the cloud's `ready`: sorted names
    spec = CodecSpec.parse(cfg.downlink_codec)
    flat, sample = initial, _Sample(initial, [], [{}])
    for rnd in range(1, rounds_ahead(setup) + 1):
        hops = [flat]
        for i in order:
            seed = derive_seed(cfg.seed, rnd, i)
            flat = train_local(cfg.model, flat, setup.train.subset(setup.shards[i]), tcfg,
                               seed=seed).flat  # fmt: skip
            if spec.lossy:  # the next edge trains what it decodes
                held = np.empty_like(flat)
                split_vector(flat, spec, max_payload=cfg.max_payload, job=cfg.job,
                             sender=setup.edge_id(i), role="model", round=rnd, version=0,
                             decoded=held)  # fmt: skip
                flat = held
            hops.append(flat)
        sample.hops.append(hops)
    return sample


def _run_ahead(setup: Setup, initial: np.ndarray, tcfg: TrainConfig) -> _Sample:
    """The first rounds of the real workload, in-process, exactly as the nodes compute them.

    Training, error feedback, the cloud's aggregation and its delta against what edges hold:
    the same arithmetic as a run, so the vectors the estimator sizes are the ones a run sends.
    Nothing is taken from a run's measurements. Async runs step through FedBuff the same way:
    every edge trains from the newest model, K of them (taking turns) make each step, all fresh.
    """
    cfg = setup.cfg
    spec_layout = layout(initial_model(setup))
    held = np.empty_like(initial)
    split_vector(
        initial,
        CodecSpec.parse(cfg.downlink_codec),
        max_payload=cfg.max_payload,
        job=cfg.job,
        sender="cloud",
        role="model",
        round=1,
        version=0,
        decoded=held,
    )
    view, model = held, initial.copy()
    feedback: dict[str, ErrorFeedback] = {}
    sample = _Sample(held, [], [])
    strategy = make_strategy(cfg)  # the cloud's own rule: a server optimizer moves the model
    names = sorted(setup.edge_id(i) for i in range(len(setup.shards)))
    picks = np.random.default_rng(cfg.seed)  # the cloud's sampling, replayed
    for rnd in range(1, rounds_ahead(setup) + 1):
        aggregator = strategy.aggregator(rnd, model)
        sent: dict[str, np.ndarray] = {}
        # Sync: the edges sampled this round; async: every edge trains, K make this step.
        if cfg.mode == "async":
            counted, trained = _fedbuff_pick(cfg, rnd, names), tuple(names)
        else:
            counted = trained = strategy.select(rnd, names, picks)
        for i in range(len(setup.shards)):
            node, seed = setup.edge_id(i), derive_seed(cfg.seed, rnd, i)
            start = setup.head_start(i, spec_layout)
            edge_cfg = replace(tcfg, trainable=head(spec_layout)[1]) if start else tcfg
            result = train_local(cfg.model, view, _edge_data(setup, i, rnd), edge_cfg, seed=seed)
            spec = CodecSpec.parse(setup.codecs[i])
            delta = result.flat - view
            # An edge not sampled does not train: its delta here only sizes later rounds.
            lossy = spec.lossy and node in trained
            if lossy:
                delta = feedback.setdefault(node, ErrorFeedback(delta.size)).compensate(delta)
            decoded = np.empty_like(delta)
            split_vector(
                delta,
                spec,
                max_payload=cfg.max_payload,
                job=cfg.job,
                sender=node,
                role="update",
                round=rnd,
                version=rnd - 1,
                num_samples=result.num_samples,
                rng=np.random.default_rng(seed),
                decoded=decoded,
                start=start,
            )
            if lossy:
                feedback[node].update(decoded)
            sent[node] = delta
            if node in counted:
                aggregator.add(node, start, decoded[start:], float(result.num_samples))
        sample.sent.append(sent)
        model = aggregator.result()
        change = model - view
        decoded = np.empty_like(change)
        split_vector(
            change,
            CodecSpec.parse(cfg.delta_codec),
            max_payload=cfg.max_payload,
            job=cfg.job,
            sender="cloud",
            role="delta",
            round=rnd + 1,
            version=rnd,
            rng=np.random.default_rng((cfg.seed, rnd)),
            decoded=decoded,
        )
        sample.changes.append(change)
        view = view + decoded
    return sample


def round_timeout_for(setup: Setup, est: Estimate | None) -> float:
    """The configured deadline, stretched for slow fleets so a round can finish at all."""
    if est is None or not est.rounds:
        return setup.cfg.round_timeout
    slowest = max(r.bound_seconds for r in est.rounds)
    return max(setup.cfg.round_timeout, 3 * slowest + 30)


STRATEGIES = ("fedavg", "median", "trimmed_mean", "krum", "multikrum", "normclip")
SERVER_OPTS = ("none", "serversgd", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def make_strategy(cfg: RunConfig) -> Strategy:
    """The aggregation rule, followed by the server optimizer if one is chosen.

    FedAvg is `SparseFedAvg`: the same mean, except that a coordinate only sparse (top-k)
    chunks carried is scaled up by how few of the round's updates sent it, at most 2x. It
    decides per chunk from what arrived, not from `--codec`: dense updates get FedAvg to the
    bit, and an edge on its own top-k codec gets the correction (cloud_node/sparse.py says why,
    bench/topk_study.py measured it on a validation split of both models).
    """
    base = _base_strategy(cfg)
    if cfg.server_opt == "none":
        return base
    options = {"lr": cfg.server_lr} if cfg.server_lr > 0 else {}
    optimizers: dict[str, Callable[..., ServerOptimizer]] = {
        "serversgd": ServerSGD, "fedavgm": FedAvgM, "fedadam": FedAdam, "fedyogi": FedYogi,
        "fedadagrad": FedAdagrad,
    }  # fmt: skip
    make = optimizers.get(cfg.server_opt)
    if make is None:
        raise ConfigError(
            f"unknown server optimizer {cfg.server_opt!r}; choose from {', '.join(SERVER_OPTS)}"
        )
    return ServerOptStrategy(base=base, optimizer=make(**options))


def _base_strategy(cfg: RunConfig) -> Strategy:
    """The cloud's aggregation rule by name; the robust ones resist Byzantine edges."""
    fraction, least = cfg.fraction, cfg.min_fit
    f = max(1, cfg.clients // 5)  # tolerate a fifth of the edges
    match cfg.strategy:
        case "fedavg":
            return SparseFedAvg(base=FedAvg(fraction=fraction, min_clients=least))
        case "median":
            return Median(fraction=fraction, min_clients=least)
        case "trimmed_mean":
            return TrimmedMean(fraction=fraction, min_clients=least)
        case "krum":
            return Krum(f=f, fraction=fraction, min_clients=least)
        case "multikrum":
            m = max(1, cfg.clients - f)
            return Krum(f=f, multi=m, name="multikrum", fraction=fraction, min_clients=least)
        case "normclip":
            return NormClip(fraction=fraction, min_clients=least)
    raise ConfigError(f"unknown strategy {cfg.strategy!r}; choose from {', '.join(STRATEGIES)}")
