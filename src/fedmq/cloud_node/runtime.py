"""The cloud node's async shell: presence, synchronous rounds, deadlines, evaluation.

Everything that decides (selection, aggregation, which chunk counts) is pure and lives in
`strategy`, `fedavg` and `rounds`; this module only moves messages and waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedmq.cloud_node.fedavg import FedAvg
from fedmq.cloud_node.rounds import RoundTracker, Verdict
from fedmq.cloud_node.strategy import Strategy
from fedmq.codec import (
    CodecSpec,
    Control,
    JobSpec,
    Limits,
    RoundSummary,
    RoundTask,
    Status,
    TensorChunk,
    decode,
    encode,
    split_vector,
)
from fedmq.errors import CodecError, ConfigError
from fedmq.transport import ByteMeter, Session, SessionConfig, Topics
from fedmq.workloads import Dataset, build_model, evaluate, get_flat, layout, load_dataset

log = logging.getLogger(__name__)


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
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
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
    counters: dict[str, int]
    cloud_sent: int  # bytes the cloud's socket sent / received during the round
    cloud_received: int
    client_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class CloudResult:
    records: tuple[RoundRecord, ...]
    final_flat: np.ndarray
    layout: tuple[tuple[str, tuple[int, ...]], ...]
    version: int
    malformed: int  # payloads that did not decode at all
    stale: int  # chunks that arrived outside their round

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
        self._tracker: RoundTracker | None = None
        self._round_done = asyncio.Event()
        self._presence = asyncio.Event()
        self._session: Session | None = None

    # -- messages (sync and fast: they run on the MQTT reader) --------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:  # a cleared retained message
            return
        node = self.topics.node_of(topic)
        if topic == self.topics.status(node):
            self._on_status(node, payload)
        elif topic == self.topics.update(node):
            self._on_update(node, payload)

    def _bad(self, topic: str, exc: Exception) -> None:
        self.malformed += 1
        if self._tracker is not None:
            self._tracker.counters.malformed += 1
        # Bounded logging: a flood of garbage must not become a flood of log lines.
        if self.malformed <= 20 or self.malformed % 1000 == 0:
            log.warning("rejected message on %s (%d so far): %s", topic, self.malformed, exc)

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
            self.online[node] = status
        elif self.online.pop(node, None) is not None:
            log.info("edge %s offline", node)
        self._presence.set()

    def _on_update(self, node: str, payload: bytes) -> None:
        try:
            chunk = decode(payload, self.limits, expect=TensorChunk)
        except CodecError as exc:
            self._bad(self.topics.update(node), exc)
            return
        tracker = self._tracker
        if tracker is None:
            self.stale += 1
            return
        verdict = tracker.offer(chunk, node)
        if verdict is Verdict.MALFORMED:
            self._bad(self.topics.update(node), CodecError("chunk header or values rejected"))
            tracker.counters.malformed -= 1  # _bad counted it already
        elif verdict is Verdict.STALE:
            self.stale += 1
        if tracker.done:
            self._round_done.set()

    # -- the run ------------------------------------------------------------------------------

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self._session is not None
        await self._session.publish(topic, payload, retain=retain)

    async def wait_for_edges(self, count: int, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while len(self.online) < count:
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
                f"only {len(self.online)} of {count} edges came online in {timeout:.0f} s "
                f"(online: {', '.join(sorted(self.online)) or 'none'})"
            ) from None

    async def run(self, on_round: Callable[[RoundRecord], None] | None = None) -> CloudResult:
        cfg = self.config
        _, test = load_dataset(cfg.dataset, seed=cfg.seed, test_fraction=cfg.test_fraction)
        model = build_model(
            cfg.model,
            num_features=test.x.shape[1],
            num_classes=test.num_classes,
            feature_shape=test.feature_shape,
            seed=cfg.seed,
        )
        flat, spec_layout = get_flat(model), layout(model)
        job = JobSpec(
            job=cfg.job, model=cfg.model, dataset=cfg.dataset, partition=cfg.partition,
            clients=cfg.clients, seed=cfg.seed, codec=cfg.codec, max_payload=cfg.max_payload,
            layout=spec_layout,
        )  # fmt: skip
        down = CodecSpec.parse(cfg.downlink_codec)
        # What every edge holds: the model they train from. Lossy deltas make it differ from
        # the cloud's model; each round's delta is taken against it, so nothing drifts.
        self._view = flat.copy()
        self._pending_delta: list[bytes] = []
        session_cfg = SessionConfig(
            url=cfg.broker,
            client_id=f"{cfg.job}-{cfg.node_id}",
            subscriptions=(self.topics.status_all, self.topics.update_all),
            will=(self.topics.status(cfg.node_id), _status(cfg, online=False)),
            birth=(self.topics.status(cfg.node_id), _status(cfg, online=True)),
            goodbye=(self.topics.status(cfg.node_id), _status(cfg, online=False)),
            username=cfg.username,
            password=cfg.password,
            max_packet=max(2 << 20, 2 * cfg.max_payload),
        )
        records: list[RoundRecord] = []
        rng = np.random.default_rng(cfg.seed)
        version = 0
        async with Session(session_cfg, self._on_message, self.meter) as session:
            self._session = session
            await self._publish(self.topics.task, b"", retain=True)  # clear a previous run's task
            await self._publish(self.topics.jobspec, encode(job), retain=True)
            log.info("job %s published; waiting for %d edges", cfg.job, cfg.wait_for)
            await self.wait_for_edges(cfg.wait_for, cfg.start_timeout)
            for rnd in range(1, cfg.rounds + 1):
                record, flat, version = await self._round(rnd, version, flat, down, rng, test)
                records.append(record)
                if on_round is not None:
                    on_round(record)
            await self._publish(
                self.topics.control,
                encode(Control(job=cfg.job, command="stop", reason="rounds done")),
            )
            await self._publish(self.topics.task, b"", retain=True)
            await self._publish(self.topics.jobspec, b"", retain=True)
        self._session = None
        return CloudResult(tuple(records), flat, spec_layout, version, self.malformed, self.stale)

    async def _round(
        self,
        rnd: int,
        version: int,
        flat: np.ndarray,
        down: CodecSpec,
        rng: np.random.Generator,
        test: Dataset,
    ) -> tuple[RoundRecord, np.ndarray, int]:
        cfg = self.config
        started = time.perf_counter()
        before = self.meter.read()
        selected = self.strategy.select(rnd, sorted(self.online), rng)
        tracker = RoundTracker(
            job=cfg.job, round=rnd, version=version, total=flat.size, selected=selected,
            aggregator=self.strategy.aggregator(rnd, flat), limits=self.limits,
        )  # fmt: skip
        self._round_done.clear()
        self._tracker = tracker
        held = np.empty_like(self._view)
        chunks = split_vector(
            self._view, down, max_payload=cfg.max_payload, job=cfg.job, sender=cfg.node_id,
            role="model", round=rnd, version=version, decoded=held,
        )  # fmt: skip
        self._view = held  # a lossy full-model codec changes what edges hold
        # Retained, so an edge that joins or falls behind gets this version whole; edges that
        # hold the previous version get only the (much smaller) delta.
        await self._session_publish_all(
            [(self.topics.model(i), p) for i, p in enumerate(chunks)], retain=True
        )
        if self._pending_delta:
            await self._session_publish_all(
                [(self.topics.delta(i), p) for i, p in enumerate(self._pending_delta)],
                retain=False,
            )
            self._pending_delta = []
        task = RoundTask(
            job=cfg.job, round=rnd, version=version, selected=selected,
            deadline_s=cfg.round_timeout, local_epochs=cfg.local_epochs,
            batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum, codec=cfg.codec,
        )  # fmt: skip
        await self._publish(self.topics.task, encode(task), retain=True)
        try:
            async with asyncio.timeout(cfg.round_timeout):
                await self._round_done.wait()
        except TimeoutError:
            log.warning(
                "round %d: deadline after %.0f s with %d of %d updates",
                rnd, cfg.round_timeout, len(tracker.completed), len(selected),
            )  # fmt: skip
        self._tracker = None
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
        loss, accuracy = await asyncio.to_thread(evaluate, cfg.model, flat, test)
        seconds = time.perf_counter() - started
        summary = RoundSummary(
            job=cfg.job, round=rnd, version=version, accuracy=accuracy, loss=loss,
            participants=participants, num_samples=tracker.num_samples, duration_s=seconds,
        )  # fmt: skip
        await self._publish(self.topics.summary, encode(summary))
        after = self.meter.read()
        record = RoundRecord(
            round=rnd, version=version, accuracy=accuracy, loss=loss, selected=selected,
            participants=participants, num_samples=tracker.num_samples, seconds=seconds,
            round_seconds=round_seconds,
            quorum_met=quorum_met, counters=tracker.counters.as_dict(),
            cloud_sent=after.sent - before.sent, cloud_received=after.received - before.received,
            client_metrics=tracker.client_metrics(),
        )  # fmt: skip
        return record, flat, version

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
