"""The edge node's async shell: presence, job and task tracking, model reassembly, training.

Training runs in a worker thread (`asyncio.to_thread`) so the MQTT session keeps answering
pings and acks while PyTorch works; message callbacks only decode and record.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from dataclasses import dataclass

import numpy as np

from fedmq.codec import (
    ALIGN,
    CodecSpec,
    Control,
    ErrorFeedback,
    JobSpec,
    Limits,
    RoundTask,
    Status,
    TensorChunk,
    assemble,
    decode,
    encode,
    sign,
    split_vector,
)
from fedmq.errors import CodecError, ConfigError, FedmqError, ProtocolError
from fedmq.security.keys import load_private_key
from fedmq.transport import (
    ByteMeter,
    ModelFollower,
    Reassembler,
    Session,
    SessionConfig,
    Step,
    Topics,
)
from fedmq.transport.trace import mark
from fedmq.workloads import (
    Dataset,
    PartitionSpec,
    TrainConfig,
    build_model,
    derive_seed,
    head,
    layout,
    load_dataset,
    partition,
    train_local,
    training_cost,
)
from fedmq.workloads.drift import DriftSpec, data_for_round
from fedmq.workloads.split import split_data

log = logging.getLogger(__name__)


def shard_from_id(node_id: str) -> int | None:
    """`edge-3` -> 3: the default data shard of an edge named with a trailing number."""
    match = re.search(r"(\d+)$", node_id)
    return int(match.group(1)) if match else None


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    broker: str  # mqtt://host:port
    node_id: str  # unique per edge; becomes a topic level
    job: str = "digits"
    shard: int | None = None  # which partition shard is this edge's data; None: from node_id
    profile: str = ""  # device profile name, reported in the birth message
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None  # CA file for mqtts:// (None: the system store)
    tls_cert: str | None = None  # client certificate + key, for brokers that require them
    tls_key: str | None = None
    sign_key: str = ""  # Ed25519 private key file: sign every update chunk ("" = unsigned)
    model_timeout: float = 120.0  # seconds to collect all chunks of one global model
    max_model_bytes: int = 512 << 20  # bytes of chunks held while reassembling
    exit_on_stop: bool = True  # leave when the cloud says the job is done
    resync_s: float = 10.0  # idle this long: re-fetch the retained job/task/model in case of
    # loss; the wait doubles while nothing arrives (10, 20, 40 s ... up to 64x)
    codec: str = ""  # uplink codec for this edge; empty uses the task's
    compute_flops: float = 0.0  # emulate a device this fast (FLOP/s): training takes at least
    # cost / compute_flops seconds; 0 trains at host speed
    keepalive: int = 20  # MQTT keepalive, seconds; slow links need longer (one packet's time)
    publish_timeout: float = 60.0  # seconds for one publish to be acknowledged
    split: str = ""  # split file (workloads.split): our data is its entry `shard` ("" =
    # the job's partition)
    train: str = "all"  # "all", or "head": train only the last layer, send only its slice
    # (transfer learning on a device that cannot afford the whole model; sync mode)


@dataclass(frozen=True)
class EdgeReport:
    node_id: str
    rounds_trained: int
    updates_sent: int
    bytes_sent: int
    bytes_received: int
    malformed: int
    dropped_late: int  # updates not sent because their round had already moved on


class EdgeNode:
    def __init__(
        self,
        config: EdgeConfig,
        *,
        data: Dataset | None = None,
        limits: Limits | None = None,
        meter: ByteMeter | None = None,
        train_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.config = config
        # Edges sharing one process share its cores: more training threads than cores only
        # fight over the GIL and starve the event loop that carries everyone's MQTT traffic.
        self._slots = train_slots
        self.limits = limits or Limits()
        self.meter = meter or ByteMeter()
        self.topics = Topics(config.job)
        self.malformed = 0
        self.rounds_trained = 0
        self.updates_sent = 0
        self.dropped_late = 0
        self.resyncs = 0
        self._idle_streak = 0
        self.first_update_version: int | None = None
        self._injected = data
        self._data: Dataset | None = None
        self._job: JobSpec | None = None
        self._task: RoundTask | None = None
        self._follow = ModelFollower(
            job=config.job, limits=self.limits, max_bytes=config.max_model_bytes,
            timeout_s=config.model_timeout,
        )  # fmt: skip
        self._wake = asyncio.Event()
        self._missed_deltas = False  # reconnected since we last held the current version
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._last_round = 0
        self._feedback: ErrorFeedback | None = None
        self._full_wanted = False  # subscribed to the full model topic
        self._reconnects_seen = 0
        self._activity = time.monotonic()
        # The last update sent: resent as is when a restarted cloud re-issues its round.
        self._sent: tuple[int, int, list[bytes]] | None = None  # (round, attempt, payloads)
        # Chained mode: models handed to us, by (pass, position), and the hops we have done.
        self._chain_inbox: dict[tuple[int, int], np.ndarray] = {}
        self._chain_done: set[tuple[int, int]] = set()
        self._chain_next: dict[int, str] = {}  # pass -> the edge we hand the model to
        self._chain_parts = Reassembler(  # apart: a retained model may share sender and version
            max_bytes=config.max_model_bytes, timeout_s=config.model_timeout
        )
        self._signer = None
        if config.sign_key:
            key = load_private_key(config.sign_key)
            self._signer = functools.partial(sign, sign_fn=key.sign)
        if config.train not in ("all", "head"):
            raise ConfigError(f"edge {config.node_id!r}: train must be all or head")
        if config.shard is None and data is None and shard_from_id(config.node_id) is None:
            raise ConfigError(
                f"edge {config.node_id!r}: give --shard N, or a name ending in a number (edge-3)"
            )

    # -- messages -----------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        self._activity = time.monotonic()
        if not payload:
            if topic == self.topics.jobspec and self._job is None:
                log.warning(
                    "%s: the job on %s is cleared (a run ended); waiting for the next",
                    self.config.node_id, topic,
                )  # fmt: skip
            return
        try:
            if topic == self.topics.jobspec:
                self._on_job(decode(payload, self.limits, expect=JobSpec))
            elif topic == self.topics.task:
                self._on_task(decode(payload, self.limits, expect=RoundTask))
            elif topic.startswith(self.topics.prefix + "/model/"):
                self._on_model_chunk(decode(payload, self.limits, expect=TensorChunk))
            elif topic.startswith(self.topics.prefix + "/delta/"):
                self._on_delta_chunk(decode(payload, self.limits, expect=TensorChunk))
            elif topic == self.topics.chain(self.config.node_id):
                message = decode(payload, self.limits)
                if isinstance(message, RoundTask):
                    self._on_chain_route(message)
                elif isinstance(message, TensorChunk):
                    self._on_chain_chunk(message)
                else:
                    raise ProtocolError(f"a {type(message).__name__} on our chain topic")
            elif topic == self.topics.control:
                control = decode(payload, self.limits, expect=Control)
                if control.command == "stop" and control.job == self.config.job:
                    log.info("%s: cloud says stop (%s)", self.config.node_id, control.reason)
                    self._stop.set()
                    self._wake.set()
        except (CodecError, ProtocolError) as exc:
            self.malformed += 1
            if self.malformed <= 20 or self.malformed % 1000 == 0:
                log.warning("%s: rejected message on %s: %s", self.config.node_id, topic, exc)

    def _on_job(self, job: JobSpec) -> None:
        if job.job != self.config.job:
            raise ProtocolError(f"job spec for {job.job!r} on the topic of {self.config.job!r}")
        try:
            DriftSpec.parse(job.drift)
        except ConfigError as exc:
            raise ProtocolError(f"job spec with a drift we cannot follow: {exc}") from exc
        if job != self._job:
            self._job, self._data, self._last_round = job, None, 0
            self._feedback = None
            self._wake.set()

    def _on_task(self, task: RoundTask) -> None:
        if task.job == self.config.job and (self._task is None or task != self._task):
            mark(self.config.node_id, "task_in", task.round)
            self._task = task
            self._wake.set()

    @property
    def _model(self) -> tuple[int, np.ndarray] | None:
        return self._follow.model  # (version, flat): what the cloud says edges hold

    def _on_model_chunk(self, chunk: TensorChunk) -> None:
        if self._follow.on_model(chunk, time.monotonic()) is Step.MODEL:
            self._wake.set()

    def _on_delta_chunk(self, chunk: TensorChunk) -> None:
        step = self._follow.on_delta(chunk, time.monotonic())
        if step is Step.APPLIED:
            mark(self.config.node_id, "delta_in", chunk.round)
        if step is not Step.NONE:
            self._wake.set()  # applied, or a gap: _step fetches the full model

    def _on_chain_route(self, task: RoundTask) -> None:
        """Chained mode: the cloud names our successor in a pass (the task's `next`)."""
        if task.job != self.config.job or task.mode != "chain" or not task.next:
            raise ProtocolError("a task on our chain topic that is no chain route")
        self._chain_next[task.round] = task.next
        self._wake.set()

    def _on_chain_chunk(self, chunk: TensorChunk) -> None:
        if chunk.role != "model" or chunk.job != self.config.job:
            raise ProtocolError(f"unexpected {chunk.role} chunk on our chain topic")
        chunks = self._chain_parts.add(chunk, time.monotonic())
        if chunks is None:
            return
        key = (chunk.round, chunk.version)
        if key not in self._chain_done:  # the first copy wins (the cloud may resend on a skip)
            self._chain_inbox[key] = assemble(chunks, self.limits, require_finite=True)
            self._wake.set()

    # -- the loop -----------------------------------------------------------------------------

    def _setup_data(self, job: JobSpec) -> Dataset:
        if self._injected is not None:
            return self._injected
        shard = self.config.shard
        if shard is None:
            shard = shard_from_id(self.config.node_id)
        assert shard is not None
        if not 0 <= shard < job.clients:
            raise ConfigError(f"shard {shard} is outside the job's {job.clients} shards")
        if self.config.split:
            edges, _ = split_data(job.dataset, self.config.split, job.clients)
            return edges[shard]
        train, _ = load_dataset(job.dataset, seed=job.seed)
        parts = partition(train.y, job.clients, PartitionSpec.parse(job.partition), seed=job.seed)
        return train.subset(parts[shard])

    def _check_layout(self, job: JobSpec, data: Dataset) -> None:
        model = build_model(
            job.model,
            num_features=data.x.shape[1],
            num_classes=data.num_classes,
            feature_shape=data.feature_shape,
            seed=0,
        )
        if layout(model) != job.layout:
            raise ProtocolError(f"model {job.model!r} here does not match the job's layout")

    def _status(self, online: bool) -> bytes:
        samples = len(self._data) if self._data is not None else 0
        return encode(
            Status(job=self.config.job, sender=self.config.node_id, role="edge", online=online,
                   num_samples=samples, profile=self.config.profile)
        )  # fmt: skip

    async def run(self) -> EdgeReport:
        cfg = self.config
        session_cfg = SessionConfig(
            url=cfg.broker,
            client_id=f"{cfg.job}-{cfg.node_id}",
            subscriptions=(
                self.topics.jobspec,
                self.topics.task,
                self.topics.delta_all,
                self.topics.control,
                self.topics.chain(cfg.node_id),
            ),
            will=(self.topics.status(cfg.node_id), self._status(False)),
            birth=(self.topics.status(cfg.node_id), self._status(True)),
            goodbye=(self.topics.status(cfg.node_id), self._status(False)),
            username=cfg.username,
            password=cfg.password,
            tls_ca=cfg.tls_ca,
            tls_cert=cfg.tls_cert,
            tls_key=cfg.tls_key,
            keepalive=cfg.keepalive,
            publish_timeout=cfg.publish_timeout,
            connect_timeout=max(30.0, cfg.publish_timeout),
            ack_timeout=max(10.0, cfg.publish_timeout / 4),
        )
        async with Session(session_cfg, self._on_message, self.meter) as session:
            while not (self._stop.is_set() and cfg.exit_on_stop):
                try:
                    async with asyncio.timeout(cfg.resync_s * 2 ** min(self._idle_streak, 6)):
                        await self._wake.wait()
                except TimeoutError:
                    if time.monotonic() - self._activity < cfg.resync_s:
                        continue  # bytes are still arriving (a slow link): nothing is lost yet
                    # Backoff: a fast edge waiting on slow peers must not spend its link on this.
                    self._idle_streak += 1
                    await self._resync(session)
                    continue
                self._idle_streak = 0
                self._wake.clear()
                await self._step(session)
            for leftover in self._background:
                leftover.cancel()
        read = self.meter.read()
        return EdgeReport(
            cfg.node_id, self.rounds_trained, self.updates_sent, read.sent, read.received,
            self.malformed, self.dropped_late,
        )  # fmt: skip

    async def _resync(self, session: Session) -> None:
        """Nothing happened for a while: ask the broker again for what we may have missed."""
        self.resyncs += 1
        task = self._task
        if self._job is None:
            topic = self.topics.jobspec
            if self.resyncs == 1:  # say it once, where a user sees it: the default level
                log.warning(
                    "%s: no job published yet on %s; waiting (is a cloud running with "
                    "--job %s on this broker?)", self.config.node_id, topic, self.config.job,
                )  # fmt: skip
        elif (
            task is not None
            and task.mode != "chain"  # a chain's models come on chain/<node>
            and task.selects(self.config.node_id)
            and task.round > self._last_round
            and (self._model is None or self._model[0] != task.version)
        ):
            topic = self.topics.model_all  # selected, but the model never completed
        else:
            topic = self.topics.task
        log.debug(
            "%s: idle for %.0f s; re-fetching %s", self.config.node_id, self.config.resync_s, topic
        )
        await session.resubscribe(topic)
        if topic == self.topics.model_all:
            self._full_wanted = True  # leave it again once the model is complete

    async def _step(self, session: Session) -> None:
        job, task = self._job, self._task
        if job is None:
            return
        if self._data is None:
            try:
                data = await asyncio.to_thread(self._setup_data, job)
                self._check_layout(job, data)
            except FedmqError as exc:
                log.error("%s: cannot join job %s: %s", self.config.node_id, job.job, exc)
                self._job = None
                return
            self._data = data
            session.set_birth(self._status(True))
            await session.publish(
                self.topics.status(self.config.node_id), self._status(True), retain=True
            )
            log.info("%s: joined job %s with %d samples", self.config.node_id, job.job, len(data))
        if task is not None and task.mode == "chain":
            await self._chain_step(session, job, task, self._data)
            return
        await self._sync_model(session, task)
        if task is None or not task.selects(self.config.node_id):
            return
        sent = self._sent
        if sent is not None and sent[0] == task.round and sent[1] != task.attempt:
            # The cloud restarted and re-issued the round: what it had received may be lost.
            self._sent = (task.round, task.attempt, sent[2])
            topic = self.topics.update(self.config.node_id)
            await session.publish_all([(topic, p) for p in sent[2]])
            log.info("%s: round %d re-issued; update resent", self.config.node_id, task.round)
            return
        if task.round <= self._last_round or self._model is None or self._model[0] != task.version:
            return
        await self._train_and_send(session, job, task, self._model[1], self._data)

    async def _chain_step(
        self, session: Session, job: JobSpec, task: RoundTask, data: Dataset
    ) -> None:
        """Train every model handed to us in this pass and hand it on to the next in order."""
        me = self.config.node_id
        for key in sorted(self._chain_inbox):
            rnd, position = key
            if rnd > task.round or (rnd == task.round and rnd not in self._chain_next):
                continue  # the model came before its task or route: keep it until they arrive
            flat = self._chain_inbox.pop(key)
            if rnd < task.round or key in self._chain_done:
                continue
            self._chain_done.add(key)
            cfg = TrainConfig(
                local_epochs=task.local_epochs, batch_size=task.batch_size, lr=task.lr,
                momentum=task.momentum, prox_mu=task.prox_mu,
            )  # fmt: skip
            seed = derive_seed(job.seed, rnd, self._shard())
            async with self._slots or contextlib.nullcontext():
                result = await asyncio.to_thread(train_local, job.model, flat, data, cfg, seed=seed)
            await self._emulate_compute(job, data, result.num_samples, cfg, result.seconds)
            after = self._chain_next[rnd]
            payloads = split_vector(
                result.flat, CodecSpec.parse(task.codec), max_payload=job.max_payload,
                job=job.job, sender=me, role="model", round=rnd, version=position + 1,
                signer=self._signer,
            )  # fmt: skip
            await session.publish_all([(self.topics.chain(after), p) for p in payloads])
            self.rounds_trained += 1
            log.info("%s: chain pass %d hop %d trained; passed to %s", me, rnd, position, after)

    def _shard(self) -> int:
        shard = (
            self.config.shard
            if self.config.shard is not None
            else shard_from_id(self.config.node_id)
        )
        return shard or 0

    async def _emulate_compute(
        self, job: JobSpec, data: Dataset, samples: int, cfg: TrainConfig, elapsed: float
    ) -> float:
        """Sleep out the rest of the emulated device's training time; returns that time."""
        if self.config.compute_flops <= 0:
            return elapsed
        cost = training_cost(job.model, data.x.shape[1], data.num_classes, data.feature_shape)
        seconds = cost.flops_per_sample * samples * cfg.local_epochs / self.config.compute_flops
        if seconds > elapsed:  # a device faster than this host cannot be shown
            await asyncio.sleep(seconds - elapsed)
        return max(seconds, elapsed)

    async def _sync_model(self, session: Session, task: RoundTask | None) -> None:
        """Listen to the full (retained) model only while we lack the current version.

        Edges that keep up receive just each round's delta; one that joins, reconnects or
        misses a delta subscribes to the full model once, then leaves it again.
        """
        if session.reconnects != self._reconnects_seen:  # a new connection has no such topic
            self._reconnects_seen, self._full_wanted = session.reconnects, False
            # Deltas published while we were away are gone (a restarted broker keeps nothing):
            # until we hold the current version again, only the full model helps.
            self._missed_deltas = self._model is not None
        if self._missed_deltas and task is not None and self._model is not None:
            self._missed_deltas = self._model[0] < task.version
        # One version behind: that round's delta is on its way (the broker may deliver the task
        # first). Further behind, or no model at all: only the full model helps. Not before
        # the first task: a broker that served an earlier run of this job still holds that
        # run's final model retained, and fetching it too doubled the first round's downlink.
        lag = 0 if self._missed_deltas else 1
        behind = task is not None and (self._model is None or self._model[0] < task.version - lag)
        if behind and not self._full_wanted:
            self._full_wanted = await session.subscribe(self.topics.model_all)
        elif (
            self._model is not None
            and task is not None
            and self._model[0] >= task.version
            and (self._full_wanted)
        ):
            self._full_wanted = False
            # Not awaited: the UNSUBACK is a round trip that on a slow link would come out of
            # this round's time; the UNSUBSCRIBE itself still leaves before our update does.
            leaving = asyncio.create_task(session.unsubscribe(self.topics.model_all))
            self._background.add(leaving)
            leaving.add_done_callback(self._background.discard)

    async def _train_and_send(
        self, session: Session, job: JobSpec, task: RoundTask, base: np.ndarray, data: Dataset
    ) -> None:
        self._last_round = task.round
        # Head-only edges send an aligned slice; FedAvg weighs each block by who sent it, so
        # the body is averaged over the full-training edges alone. Other modes need whole updates.
        head_only = self.config.train == "head" and task.mode == "sync"
        start, head_names = head(job.layout) if head_only else (0, ())
        shard = (
            self.config.shard
            if self.config.shard is not None
            else shard_from_id(self.config.node_id)
        )
        seed = derive_seed(job.seed, task.round, shard or 0)
        cfg = TrainConfig(
            local_epochs=task.local_epochs,
            batch_size=task.batch_size,
            lr=task.lr,
            momentum=task.momentum,
            prox_mu=task.prox_mu,
            trainable=head_names if head_only else (),
        )
        if job.drift != "none":
            rounds = max(1, job.rounds)
            data = data_for_round(
                data, DriftSpec.parse(job.drift), round=min(max(1, task.round), rounds),
                rounds=rounds, seed=derive_seed(job.seed, shard or 0),
            )  # fmt: skip
        started = time.monotonic()
        async with self._slots or contextlib.nullcontext():
            mark(self.config.node_id, "train_start", task.round)
            result = await asyncio.to_thread(train_local, job.model, base, data, cfg, seed=seed)
        mark(self.config.node_id, "train_end", task.round)
        elapsed = time.monotonic() - started
        compute_seconds = await self._emulate_compute(job, data, result.num_samples, cfg, elapsed)
        # Sync: the round closed without us. Async: an update is never late, only stale, and
        # the cloud weighs it by how stale it is.
        if task.mode == "sync" and self._task is not None and self._task.round != task.round:
            self.dropped_late += 1
            log.warning(
                "%s: round %d closed while training; update dropped",
                self.config.node_id,
                task.round,
            )
            return
        spec = CodecSpec.parse(self.config.codec or task.codec)
        delta = result.flat - base
        decoded: np.ndarray | None = None
        if spec.lossy:
            # Error feedback: what the lossy codec drops this round is sent in later rounds.
            if self._feedback is None or self._feedback.size != delta.size:
                self._feedback = ErrorFeedback(delta.size)
            delta = self._feedback.compensate(delta)
            decoded = np.empty_like(delta)
        # On the loop, not in a worker thread: encoding a 9,610-parameter update takes about
        # 0.2 ms, while a hop to the thread pool waited about 5 ms behind training threads.
        payloads = split_vector(
            delta, spec, max_payload=job.max_payload, job=job.job,
            sender=self.config.node_id, role="update", round=task.round, version=task.version,
            num_samples=result.num_samples, rng=np.random.default_rng(seed), decoded=decoded,
            metrics={"loss": result.loss, "accuracy": result.accuracy,
                     "seconds": max(elapsed, compute_seconds)}, signer=self._signer,
            start=start - start % ALIGN,
        )  # fmt: skip
        if self._feedback is not None and decoded is not None:
            self._feedback.update(decoded)
        topic = self.topics.update(self.config.node_id)
        self._sent = (task.round, task.attempt, payloads)
        mark(self.config.node_id, "encoded", task.round)
        await session.publish_all([(topic, p) for p in payloads])
        mark(self.config.node_id, "update_acked", task.round)
        self.rounds_trained += 1
        self.updates_sent += 1
        if self.first_update_version is None:
            self.first_update_version = task.version
        log.debug(
            "%s: round %d update sent (%d chunks)", self.config.node_id, task.round, len(payloads)
        )
