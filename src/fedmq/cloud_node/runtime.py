"""The cloud node's async shell: presence, synchronous rounds, deadlines, evaluation.

Everything that decides (selection, aggregation, which chunk counts) is pure and lives in
`strategy`, `fedavg` and `rounds`; this module only moves messages and waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.cloud_node import checkpoint
from fedmq.cloud_node.asynchronous import AsyncLoop
from fedmq.cloud_node.chain import ChainLoop
from fedmq.cloud_node.fedavg import FedAvg
from fedmq.cloud_node.rounds import RoundTracker, Verdict
from fedmq.cloud_node.screen import NormScreen
from fedmq.cloud_node.staleness import Staleness
from fedmq.cloud_node.strategy import Strategy, named
from fedmq.codec import (
    BadSignature,
    CodecSpec,
    Control,
    JobSpec,
    Limits,
    RoundSummary,
    RoundTask,
    Status,
    TensorChunk,
    check,
    decode,
    encode,
    split_vector,
)
from fedmq.errors import CodecError, ConfigError
from fedmq.security.keys import load_trusted
from fedmq.transport import ByteMeter, Session, SessionConfig, Topics
from fedmq.transport.trace import mark
from fedmq.workloads import Dataset, build_model, evaluate, get_flat, layout, load_dataset
from fedmq.workloads.drift import DriftSpec
from fedmq.workloads.split import load_init_weights, split_data

log = logging.getLogger(__name__)

GROWTH = 2  # an edge may re-declare up to this many times the samples it joined with


@dataclass(frozen=True, kw_only=True)
class CloudConfig:
    broker: str  # mqtt://host:port
    job: str = "digits"  # topic namespace: fedmq/<job>/...
    node_id: str = "cloud"
    model: str = "mlp"
    dataset: str = "digits"
    partition: str = "dirichlet:0.5"  # how edges split the training set (they read it from JobSpec)
    clients: int = 10  # edges the training set is partitioned over
    min_clients: int = 0  # edges online before round 1; 0 means `clients`
    rounds: int = 30
    fraction: float = 1.0  # share of online edges sampled per round
    min_fit: int = 1  # sample at least this many edges per round
    quorum: float = 0.5  # share of the sampled edges that must deliver for a round to count
    local_epochs: int = 5
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9  # edge SGD momentum (its buffer restarts every round)
    codec: str = "fp32+zstd"  # uplink (edge -> cloud) codec
    downlink_codec: str = "fp32+zstd"  # the full global model (retained, for edges that join)
    delta_codec: str = "int8+zstd"  # each round's model change, sent to edges that hold the last
    max_payload: int = 128 * 1024  # bytes per MQTT message; managed brokers cap at 128-256 KiB
    seed: int = 0
    test_fraction: float = 0.2  # held-out share of the dataset, evaluated at the cloud
    round_timeout: float = 120.0  # seconds the cloud waits for the sampled updates
    start_timeout: float = 300.0  # seconds to wait for `min_clients` edges to come online
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None  # CA file for mqtts:// (None: the system store)
    tls_cert: str | None = None  # client certificate + key, for brokers that require them
    tls_key: str | None = None
    trusted_keys: str = ""  # folder of <edge>.pub Ed25519 keys: only updates they signed count
    prox_mu: float = 0.0  # FedProx proximal term the edges add to their loss (0: off)
    drift: str = "none"  # how each edge's data changes over rounds (workloads.drift)
    mode: str = "sync"  # sync: rounds with deadlines; async: FedBuff, the cloud never waits;
    # chain: the model passes from edge to edge (round_timeout: per hop)
    buffer_size: int = 5  # async: apply the buffer after this many accepted updates (K)
    max_staleness: int = 10  # async: reject updates based on a version older than this
    staleness: str = "poly:0.5"  # async: weight of a stale update (see cloud_node.staleness)
    max_update_value: float = 1e4  # an update with any |coordinate| above this is rejected
    norm_screen: float = 10.0  # clip an update slice above this many times its last median
    # norm (cloud_node.screen; 0: off). Not checkpointed: a resumed cloud relearns it in a round
    max_reassembly_bytes: int = 256 << 20  # async: bytes of update chunks held while incomplete
    checkpoint: str = ""  # file written atomically after every round ("" = none)
    resume: bool = False  # start from `checkpoint` when it exists
    split: str = ""  # split file (workloads.split): its `test` indices are the held-out set
    init_weights: str = ""  # .npz of the model's named arrays: the initial model ("" = seeded)

    def __post_init__(self) -> None:
        checks = [
            (self.clients >= 1, "clients must be >= 1"),
            (self.rounds >= 1, "rounds must be >= 1"),
            (0 < self.fraction <= 1, "fraction must be in (0, 1]"),
            (0 < self.quorum <= 1, "quorum must be in (0, 1]"),
            (self.min_clients >= 0, "min_clients must be >= 0"),
            (self.round_timeout > 0, "round_timeout must be > 0"),
            (self.local_epochs >= 1 and self.batch_size >= 1, "local_epochs and batch_size >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (not self.resume or bool(self.checkpoint), "resume needs a checkpoint file"),
            (self.mode in ("sync", "async", "chain"), "mode must be sync, async or chain"),
            (self.mode != "chain" or not self.checkpoint, "chained mode keeps no checkpoint"),
            (self.buffer_size >= 1 and self.max_staleness >= 0, "buffer_size >= 1, staleness >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        Staleness.parse(self.staleness)
        DriftSpec.parse(self.drift)
        for spec in (self.codec, self.downlink_codec, self.delta_codec):
            try:
                CodecSpec.parse(spec)
            except CodecError as exc:
                raise ConfigError(str(exc)) from exc
        full = CodecSpec.parse(self.downlink_codec)
        if full.topk is not None or full.dtype == "sign":
            raise ConfigError(
                f"downlink codec {self.downlink_codec}: the full model needs a dense codec "
                "(top-k and sign only make sense for deltas)"
            )

    @property
    def wait_for(self) -> int:
        return self.min_clients or self.clients

    def job_spec(self, layout: tuple[tuple[str, tuple[int, ...]], ...]) -> JobSpec:
        """The job this cloud publishes (the estimator sizes the very same message)."""
        return JobSpec(
            job=self.job, model=self.model, dataset=self.dataset, partition=self.partition,
            clients=self.clients, seed=self.seed, codec=self.codec, max_payload=self.max_payload,
            layout=layout, drift=self.drift, rounds=self.rounds,
        )  # fmt: skip

    def task(
        self,
        *,
        round: int,
        version: int,
        selected: tuple[str, ...],
        mode: str = "sync",
        attempt: int = 0,
        codec: str = "",
    ) -> RoundTask:
        """A task with this run's training settings; `codec` defaults to the uplink codec.

        `selected` travels as a salt and a threshold (a `Selection`'s own, or, for a plain
        tuple such as every online edge, the zero salt and the largest hash among them).
        """
        chosen = named(selected, selected)
        return RoundTask(
            job=self.job, round=round, version=version, salt=chosen.salt,
            threshold=chosen.threshold,
            deadline_s=self.round_timeout, local_epochs=self.local_epochs,
            batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
            codec=codec or self.codec, mode=mode, attempt=attempt, prox_mu=self.prox_mu,
        )  # fmt: skip


@dataclass(frozen=True)
class RoundRecord:
    round: int
    version: int  # global model version after this round
    accuracy: float
    loss: float
    selected: tuple[str, ...]
    participants: tuple[str, ...]  # sampled edges that delivered every chunk
    num_samples: int
    seconds: float  # the whole round, evaluation included
    round_seconds: float  # model publish to aggregate ready: the part links and devices bound
    quorum_met: bool
    counters: dict[str, int]  # chunk verdicts: accepted, duplicate, stale, forged...
    cloud_sent: int  # bytes the cloud's socket sent / received during the round
    cloud_received: int
    client_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    elapsed: float = 0.0  # seconds since the first round began (async: accuracy over time)
    departed: tuple[str, ...] = ()  # selected edges that went offline before they delivered


@dataclass(frozen=True)
class CloudResult:
    records: tuple[RoundRecord, ...]
    final_flat: np.ndarray
    layout: tuple[tuple[str, tuple[int, ...]], ...]
    version: int
    malformed: int  # payloads that did not decode at all
    stale: int  # chunks that arrived outside their round
    forged: int = 0  # update chunks without a valid signature of their sender
    resumed_from: int = 0  # the round of the checkpoint this run resumed from (0: none)

    @property
    def final_accuracy(self) -> float:
        return self.records[-1].accuracy if self.records else float("nan")


class CloudNode:
    def __init__(
        self,
        config: CloudConfig,
        *,
        strategy: Strategy | None = None,
        limits: Limits | None = None,
        meter: ByteMeter | None = None,
    ) -> None:
        self.config = config
        self.strategy: Strategy = strategy or FedAvg(
            fraction=config.fraction, min_clients=config.min_fit
        )
        self.limits = limits or Limits()
        self.meter = meter or ByteMeter()
        self.topics = Topics(config.job)
        self.online: dict[str, Status] = {}
        self.malformed = 0
        self.stale = 0
        self.forged = 0
        self._keys = load_trusted(config.trusted_keys) if config.trusted_keys else None
        self._attempt = 0
        self._tracker: RoundTracker | None = None
        self._async: AsyncLoop | None = None
        self._restored_buffer: dict[str, np.ndarray] = {}
        self._chain: ChainLoop | None = None
        self._round_done = asyncio.Event()
        self._screen = NormScreen(factor=config.norm_screen) if config.norm_screen > 0 else None
        self._first_declared: dict[str, int] = {}  # samples each edge declared when it joined
        self._declared: dict[str, int] = {}  # the weight each edge may claim (see _declare)
        self._round_started = 0.0
        self._presence = asyncio.Event()
        self._session: Session | None = None

    @property
    def ready(self) -> list[str]:
        """Online edges that have joined the job (they report their samples): the ones to ask.

        A birth comes at connect, before the edge has its data; asking it to train then only
        costs the round its deadline.
        """
        return sorted(n for n, s in self.online.items() if s.num_samples > 0)

    # -- messages (sync and fast: they run on the MQTT reader) --------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:  # a cleared retained message
            return
        node = self.topics.node_of(topic)
        if topic == self.topics.status(node):
            self._on_status(node, payload)
        elif topic == self.topics.update(node):
            self._on_update(node, payload)
        elif self._chain is not None and topic == self.topics.chain(node):
            try:
                message = decode(payload, self.limits)
            except CodecError as exc:
                self._bad(topic, exc)
                return
            if isinstance(message, RoundTask):
                return  # our own route to that edge (we listen to chain/+)
            if not isinstance(message, TensorChunk):
                self._bad(topic, CodecError(f"a {type(message).__name__} on a chain topic"))
                return
            self._chain.offer(message)

    def _bad(self, topic: str, exc: Exception) -> None:
        self.malformed += 1
        if self._tracker is not None:
            self._tracker.counters.malformed += 1
        # Bounded logging: a flood of garbage must not become a flood of log lines.
        if self.malformed <= 20 or self.malformed % 1000 == 0:
            log.warning("rejected message on %s (%d so far): %s", topic, self.malformed, exc)

    def _authentic(self, chunk: TensorChunk) -> bool:
        """With trusted keys: is the chunk signed by its sender's enrolled key? Counts if not.

        The sync rounds check inside `RoundTracker` (a verdict among the others); the async and
        chain loops, which reassemble whole vectors first, check each chunk here.
        """
        if self._keys is None:
            return True
        try:
            check(chunk, self._keys)
        except BadSignature as exc:
            self.forged += 1
            if self.forged <= 20 or self.forged % 1000 == 0:
                log.warning("rejected update chunk (%d so far): %s", self.forged, exc)
            return False
        return True

    def _on_status(self, node: str, payload: bytes) -> None:
        try:
            status = decode(payload, self.limits, expect=Status)
        except CodecError as exc:
            self._bad(self.topics.status(node), exc)
            return
        if status.sender != node or status.role != "edge" or status.job != self.config.job:
            return
        if status.online:
            if node not in self.online:
                log.info("edge %s online (%d samples)", node, status.num_samples)
            self._declare(node, status.num_samples)
            self.online[node] = status
        elif self.online.pop(node, None) is not None:
            log.info("edge %s offline", node)
            self._departed(node)
        self._presence.set()
        if self._async is not None:
            self._async.presence_changed.set()
        if self._chain is not None:
            self._chain.presence_changed()

    def _declare(self, node: str, samples: int) -> None:
        """Remember what an edge declared when it joined: the most FedAvg weight it may claim.

        A later declaration is logged and may raise the bound to at most `GROWTH` times the
        first one, so one identity cannot talk its weight up without limit."""
        if samples <= 0:
            return  # a birth before the edge has its data
        first = self._first_declared.setdefault(node, samples)
        bound = min(samples, GROWTH * first)
        if samples != first and self._declared.get(node) != bound:
            log.warning(
                "edge %s now declares %d samples (joined with %d); its updates may claim at "
                "most %d", node, samples, first, bound,
            )  # fmt: skip
        self._declared[node] = bound

    def _departed(self, node: str) -> None:
        """An edge went offline (its will or its goodbye): a round must not wait for it."""
        tracker = self._tracker
        if tracker is None or not tracker.depart(node):
            return
        log.warning(
            "round %d: %s went offline %.2f s into the round; not waiting for it "
            "(%d of %d updates in, %d outstanding)",
            tracker.round, node, time.perf_counter() - self._round_started,
            len(tracker.completed), len(tracker.selected), len(tracker.outstanding),
        )  # fmt: skip
        if tracker.done:
            self._round_done.set()

    def _on_update(self, node: str, payload: bytes) -> None:
        try:
            chunk = decode(payload, self.limits, expect=TensorChunk)
        except CodecError as exc:
            self._bad(self.topics.update(node), exc)
            return
        if self._async is not None:
            self._async.offer(chunk, node)
            return
        tracker = self._tracker
        if tracker is None:
            self.stale += 1
            return
        verdict = tracker.offer(chunk, node)
        if verdict is Verdict.ACCEPTED and node in tracker.completed:
            mark(node, "update_in", tracker.round)
            log.info(
                "round %d: update of %s complete (%d of %d)",
                tracker.round, node, len(tracker.completed), len(tracker.selected),
            )  # fmt: skip
        if verdict is Verdict.MALFORMED:
            self._bad(self.topics.update(node), CodecError("chunk header or values rejected"))
            tracker.counters.malformed -= 1  # _bad counted it already
        elif verdict is Verdict.STALE:
            self.stale += 1
        elif verdict is Verdict.OUT_OF_RANGE:
            log.warning("rejected an update chunk of %s: values over %g", node, tracker.max_abs)
        elif verdict is Verdict.FORGED:
            self.forged += 1
            if self.forged <= 20 or self.forged % 1000 == 0:
                log.warning("rejected unsigned or forged update chunk from %s", node)
        if tracker.done:
            self._round_done.set()

    # -- the run ------------------------------------------------------------------------------

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self._session is not None
        await self._session.publish(topic, payload, retain=retain)

    async def wait_for_edges(self, count: int, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while len(self.ready) < count:
                    self._presence.clear()
                    try:
                        async with asyncio.timeout(10.0):
                            await self._presence.wait()
                    except TimeoutError:
                        # Births are retained: subscribing again re-delivers any we missed.
                        assert self._session is not None
                        await self._session.resubscribe(self.topics.status_all)
        except TimeoutError:
            raise ConfigError(
                f"only {len(self.ready)} of {count} edges joined in {timeout:.0f} s "
                f"(joined: {', '.join(self.ready) or 'none'}; "
                f"online: {', '.join(sorted(self.online)) or 'none'})"
            ) from None

    async def run(self, on_round: Callable[[RoundRecord], None] | None = None) -> CloudResult:
        cfg = self.config
        if cfg.split:  # another framework's exact split: evaluate on its test set
            _, test = split_data(cfg.dataset, cfg.split, cfg.clients)
        else:
            _, test = load_dataset(cfg.dataset, seed=cfg.seed, test_fraction=cfg.test_fraction)
        model = build_model(
            cfg.model,
            num_features=test.x.shape[1],
            num_classes=test.num_classes,
            feature_shape=test.feature_shape,
            seed=cfg.seed,
        )
        flat, spec_layout = get_flat(model), layout(model)
        if cfg.init_weights:
            flat = load_init_weights(cfg.init_weights, spec_layout)
        job = cfg.job_spec(spec_layout)
        # What every edge holds: the model they train from. Lossy deltas make it differ from
        # the cloud's model; each round's delta is taken against it, so nothing drifts.
        self._view = flat.copy()
        self._pending_delta: list[bytes] = []
        if cfg.mode == "chain":  # before subscribing: hops may arrive as soon as we listen
            self._chain = ChainLoop(self)
        session_cfg = SessionConfig(
            url=cfg.broker,
            client_id=f"{cfg.job}-{cfg.node_id}",
            subscriptions=(self.topics.status_all, self.topics.update_all)
            + ((self.topics.chain_all,) if cfg.mode == "chain" else ()),
            will=(self.topics.status(cfg.node_id), _status(cfg, online=False)),
            birth=(self.topics.status(cfg.node_id), _status(cfg, online=True)),
            goodbye=(self.topics.status(cfg.node_id), _status(cfg, online=False)),
            username=cfg.username,
            password=cfg.password,
            tls_ca=cfg.tls_ca,
            tls_cert=cfg.tls_cert,
            tls_key=cfg.tls_key,
            max_packet=max(2 << 20, 2 * cfg.max_payload),
        )
        records: list[RoundRecord] = []
        rng = np.random.default_rng(cfg.seed)
        version = first = 0
        if cfg.resume:
            flat, version, first = self._restore(Path(cfg.checkpoint), flat, rng, records)
        async with Session(session_cfg, self._on_message, self.meter) as session:
            self._session = session
            await self._publish(self.topics.task, b"", retain=True)  # clear a previous run's task
            await self._publish(self.topics.jobspec, encode(job), retain=True)
            log.info("job %s published; waiting for %d edges", cfg.job, cfg.wait_for)
            await self.wait_for_edges(cfg.wait_for, cfg.start_timeout)
            if cfg.mode == "async":
                self._async = AsyncLoop(self, flat.size)
                self._async.version = version
                if self._restored_buffer:
                    self._async.buffer.load_state(self._restored_buffer)
                records, flat = await self._async.run(flat, test, on_round, first, records)
                version = self._async.version
            elif self._chain is not None:
                records, flat = await self._chain.run(flat, test, on_round)
                version = len(records)
                self._view, self._pending_delta = flat.copy(), []
                await self._publish_model(version, round=cfg.rounds + 1)  # for serving nodes
            began = time.perf_counter()
            for rnd in range(first + 1, cfg.rounds + 1 if cfg.mode == "sync" else 1):
                record, flat, version = await self._round(rnd, version, flat, rng, test)
                record = replace(record, elapsed=time.perf_counter() - began)
                records.append(record)
                if cfg.checkpoint:
                    self._save(Path(cfg.checkpoint), rnd, version, flat, rng, records)
                if on_round is not None:
                    on_round(record)
            if cfg.mode == "sync" and records:
                # The last round's result: to edges (which keep it to use) and serving nodes.
                await self._publish_model(version, round=cfg.rounds + 1)
            await self._publish(
                self.topics.control,
                encode(Control(job=cfg.job, command="stop", reason="rounds done")),
            )
            await self._publish(self.topics.task, b"", retain=True)
            await self._publish(self.topics.jobspec, b"", retain=True)
        self._session = None
        return CloudResult(
            tuple(records), flat, spec_layout, version, self.malformed, self.stale,
            forged=self.forged, resumed_from=first,
        )  # fmt: skip

    # -- checkpoints --------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        """What must not change across a resume: the same job on the same data and model."""
        cfg = self.config
        return {"job": cfg.job, "model": cfg.model, "dataset": cfg.dataset,
                "partition": cfg.partition, "clients": cfg.clients, "seed": cfg.seed,
                "strategy": self.strategy.name}  # fmt: skip

    def _save(
        self,
        path: Path,
        rnd: int,
        version: int,
        flat: np.ndarray,
        rng: np.random.Generator | None,
        records: list[RoundRecord],
        buffer: dict[str, np.ndarray] | None = None,
    ) -> None:
        optimizer = getattr(self.strategy, "optimizer", None)
        meta = {
            "identity": self._identity(),
            "config": {k: v for k, v in asdict(self.config).items() if k != "password"},
            "rng": rng.bit_generator.state if rng is not None else None,
            "records": [asdict(r) for r in records],
            "malformed": self.malformed,
            "stale": self.stale,
            "forged": self.forged,
        }
        checkpoint.save(
            path,
            checkpoint.Checkpoint(
                round=rnd, version=version, attempt=self._attempt, flat=flat, view=self._view,
                pending_delta=tuple(self._pending_delta), meta=meta,
                optimizer=optimizer.state() if optimizer is not None else {},
                buffer=buffer or {},
            ),
        )  # fmt: skip

    def _restore(
        self, path: Path, flat: np.ndarray, rng: np.random.Generator, records: list[RoundRecord]
    ) -> tuple[np.ndarray, int, int]:
        if not path.exists():
            log.info("no checkpoint at %s yet: starting from round 1", path)
            return flat, 0, 0
        ckpt = checkpoint.load(path)
        if ckpt.meta.get("identity") != self._identity():
            raise ConfigError(
                f"checkpoint {path} is of another run: {ckpt.meta.get('identity')} "
                f"!= {self._identity()}"
            )
        if ckpt.flat.shape != flat.shape or ckpt.view.shape != flat.shape:
            raise ConfigError(f"checkpoint {path}: model size {ckpt.flat.size} != {flat.size}")
        if ckpt.meta["rng"] is not None:
            rng.bit_generator.state = ckpt.meta["rng"]
        self._restored_buffer = dict(ckpt.buffer)
        for r in ckpt.meta["records"]:
            records.append(
                RoundRecord(**{**r, "selected": tuple(r["selected"]),
                               "participants": tuple(r["participants"]),
                               "departed": tuple(r.get("departed", ()))})
            )  # fmt: skip
        optimizer = getattr(self.strategy, "optimizer", None)
        if optimizer is not None and ckpt.optimizer:
            optimizer.load_state(ckpt.optimizer)
        self.malformed, self.stale = ckpt.meta["malformed"], ckpt.meta["stale"]
        self.forged = ckpt.meta.get("forged", 0)
        self._view = ckpt.view.astype(np.float32)
        self._pending_delta = list(ckpt.pending_delta)
        self._attempt = ckpt.attempt + 1  # edges resend what they sent for a re-issued round
        log.info(
            "resumed from %s: round %d done, version %d, attempt %d",
            path, ckpt.round, ckpt.version, self._attempt,
        )  # fmt: skip
        return ckpt.flat.astype(np.float32), ckpt.version, ckpt.round

    async def _round(
        self,
        rnd: int,
        version: int,
        flat: np.ndarray,
        rng: np.random.Generator,
        test: Dataset,
    ) -> tuple[RoundRecord, np.ndarray, int]:
        cfg = self.config
        started = time.perf_counter()
        before = self.meter.read()
        chosen = named(self.strategy.select(rnd, self.ready, rng), self.ready)
        selected = tuple(chosen)  # records hold plain tuples (asdict cannot copy a Selection)
        tracker = RoundTracker(
            job=cfg.job, round=rnd, version=version, total=flat.size, selected=selected,
            aggregator=self.strategy.aggregator(rnd, flat), limits=self.limits, keys=self._keys,
            max_abs=cfg.max_update_value, declared=self._declared, screen=self._screen,
        )  # fmt: skip
        clipped_before = 0
        if self._screen is not None:
            self._screen.begin_round(flat)
            clipped_before = self._screen.clipped
        self._round_done.clear()
        self._tracker = tracker
        self._round_started = started
        mark(cfg.node_id, "round_start", rnd)
        task = cfg.task(round=rnd, version=version, selected=chosen, attempt=self._attempt)
        # Issued in order (model, delta, task) within one window of unacknowledged messages:
        # waiting for the model's PUBACKs before sending the task cost a round trip per round,
        # and edges already cope with a task that overtakes its delta at the broker (§11.2).
        await self._publish_model(version, round=rnd, then=[(self.topics.task, encode(task))])
        mark(cfg.node_id, "task_acked", rnd)
        try:
            async with asyncio.timeout(cfg.round_timeout):
                if not tracker.done:
                    await self._round_done.wait()
        except TimeoutError:
            log.warning(
                "round %d: deadline after %.0f s with %d of %d updates (missing: %s)",
                rnd, cfg.round_timeout, len(tracker.completed), len(selected),
                ", ".join(tracker.outstanding),
            )  # fmt: skip
        self._tracker = None
        mark(cfg.node_id, "all_in", rnd)
        clipped = 0
        if self._screen is not None:
            log.debug("round %d: largest update norm / reference %.2f", rnd, self._screen.peak)
            self._screen.end_round()
            clipped = self._screen.clipped - clipped_before
            if clipped:
                log.warning(
                    "round %d: %d update slices clipped to %g x their last median norm",
                    rnd, clipped, self._screen.factor,
                )  # fmt: skip
        participants = tracker.completed
        needed = max(1, int(np.ceil(cfg.quorum * len(selected))))
        quorum_met = len(participants) >= needed
        if quorum_met:
            flat = tracker.aggregator.result()
            version += 1
            self._prepare_delta(flat, rnd + 1, version)
        else:
            log.warning(
                "round %d: quorum not met (%d < %d); model kept", rnd, len(participants), needed
            )
        round_seconds = time.perf_counter() - started
        mark(cfg.node_id, "aggregated", rnd)
        loss, accuracy = await asyncio.to_thread(evaluate, cfg.model, flat, test)
        mark(cfg.node_id, "evaluated", rnd)
        seconds = time.perf_counter() - started
        summary = RoundSummary(
            job=cfg.job, round=rnd, version=version, accuracy=accuracy, loss=loss,
            participants=len(participants), num_samples=tracker.num_samples, duration_s=seconds,
        )  # fmt: skip
        await self._publish(self.topics.summary, encode(summary))
        mark(cfg.node_id, "summary_acked", rnd)
        after = self.meter.read()
        record = RoundRecord(
            round=rnd, version=version, accuracy=accuracy, loss=loss, selected=selected,
            participants=participants, num_samples=tracker.num_samples, seconds=seconds,
            round_seconds=round_seconds,
            quorum_met=quorum_met, counters={**tracker.counters.as_dict(), "clipped": clipped},
            cloud_sent=after.sent - before.sent, cloud_received=after.received - before.received,
            client_metrics=tracker.client_metrics(), departed=tuple(sorted(tracker.departed)),
        )  # fmt: skip
        return record, flat, version

    async def _publish_model(
        self, version: int, *, round: int, then: list[tuple[str, bytes]] | None = None
    ) -> None:
        """The model edges hold, retained in full, then the pending delta to it (if any), then
        `then` (retained: the task), all in one window."""
        cfg = self.config
        held = np.empty_like(self._view)
        chunks = split_vector(
            self._view, CodecSpec.parse(cfg.downlink_codec), max_payload=cfg.max_payload,
            job=cfg.job, sender=cfg.node_id, role="model", round=round, version=version,
            decoded=held,
        )  # fmt: skip
        self._view = held  # a lossy full-model codec changes what edges hold
        # Retained, so an edge that joins or falls behind gets this version whole; edges that
        # hold the previous version get only the (much smaller) delta.
        items = [(self.topics.model(i), p, True) for i, p in enumerate(chunks)]
        items += [(self.topics.delta(i), p, False) for i, p in enumerate(self._pending_delta)]
        items += [(topic, p, True) for topic, p in then or ()]
        self._pending_delta = []
        assert self._session is not None
        session = self._session
        async with asyncio.TaskGroup() as tg:
            for topic, payload, retain in items:
                tg.create_task(session.publish(topic, payload, retain=retain))

    def _prepare_delta(self, flat: np.ndarray, rnd: int, version: int) -> None:
        """Encode `flat - view` for the next round and move the view by what edges will decode."""
        cfg = self.config
        decoded = np.empty_like(self._view)
        self._pending_delta = split_vector(
            flat - self._view, CodecSpec.parse(cfg.delta_codec), max_payload=cfg.max_payload,
            job=cfg.job, sender=cfg.node_id, role="delta", round=rnd, version=version,
            rng=np.random.default_rng((cfg.seed, version)), decoded=decoded,
        )  # fmt: skip
        self._view = self._view + decoded

    async def _session_publish_all(self, items: list[tuple[str, bytes]], *, retain: bool) -> None:
        assert self._session is not None
        await self._session.publish_all(items, retain=retain)


def _status(cfg: CloudConfig, *, online: bool) -> bytes:
    return encode(Status(job=cfg.job, sender=cfg.node_id, role="cloud", online=online))
