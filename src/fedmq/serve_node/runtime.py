"""The serve node's async shell: follow the job's global model, answer predictions.

It follows versions exactly as an edge does: the retained full model once (on start, after a gap
or a restart of the cloud), then each round's delta applied on top of the exact previous version.
Requests arrive on MQTT (and HTTP if asked); checks and inference run in worker threads so the
session keeps flowing. A bad request gets an error reply and a log line, never a crash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedmq.codec import JobSpec, Limits, RoundTask, TensorChunk, decode
from fedmq.errors import CodecError, ConfigError, FedmqError, ProtocolError, TransportError
from fedmq.serve_node import api
from fedmq.serve_node.httpd import HttpServer, parse_http_address
from fedmq.serve_node.service import Predictor, Served, respond
from fedmq.transport import ByteMeter, ModelFollower, Session, SessionConfig, Step, Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    broker: str  # mqtt://host:port
    job: str = "digits"  # the job whose model is served: topics fedmq/<job>/...
    node_id: str = "serve"  # the MQTT client id is <job>-<node_id>
    http: str = ""  # HOST:PORT of the HTTP endpoint (port 0: any free); empty: MQTT only
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None  # as every node (transport.SessionConfig): mqtts:// needs these
    tls_cert: str | None = None
    tls_key: str | None = None
    max_request_bytes: int = 1 << 20  # one request's bytes, checked before it is parsed
    max_rows: int = 1024  # samples in one request
    max_queue: int = 64  # MQTT requests waiting for a worker; more are dropped (counted)
    workers: int = 2  # MQTT requests answered at once (the forward pass itself is serialised)
    model_timeout: float = 120.0  # seconds to collect all chunks of one model or delta
    max_model_bytes: int = 512 << 20  # bytes of chunks held while reassembling
    resync_s: float = 10.0  # idle this long: re-fetch the retained job/task/model (doubling)
    keepalive: int = 20  # MQTT keepalive, seconds

    def __post_init__(self) -> None:
        if self.http:
            parse_http_address(self.http)
        checks = [
            (self.max_queue >= 1 and self.workers >= 1, "max_queue and workers must be >= 1"),
            (self.model_timeout > 0 and self.resync_s > 0, "timeouts must be > 0"),
            (self.max_model_bytes > 0, "max_model_bytes must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        _ = self.request_limits  # validates max_request_bytes and max_rows

    @property
    def request_limits(self) -> api.RequestLimits:
        return api.RequestLimits(max_bytes=self.max_request_bytes, max_rows=self.max_rows)


@dataclass(frozen=True)
class ServeReport:
    node_id: str
    requests: int  # answered, on MQTT and HTTP together
    errors: int  # of those, answered with an error
    dropped: int  # MQTT requests not answered: the queue was full
    versions: tuple[int, ...] = field(default=())  # model versions served, in order (last 256)
    full_models: int = 0  # full models assembled
    deltas_applied: int = 0
    malformed: int = 0  # job messages that did not decode or broke the protocol


class ServeNode:
    """`report = await ServeNode(ServeConfig(broker=url, job="digits")).run()`; `stop()` ends it."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        limits: Limits | None = None,
        meter: ByteMeter | None = None,
        on_version: Callable[[int, str], None] | None = None,  # (version, model) now serving
        on_http: Callable[[str], None] | None = None,  # the HTTP endpoint's URL, once bound
    ) -> None:
        self.config = config
        self.limits = limits or Limits()
        self.meter = meter or ByteMeter()
        self.topics = Topics(config.job)
        self.http: HttpServer | None = None  # while running with `config.http`
        self._session: Session | None = None
        self.requests = 0
        self.errors = 0
        self.dropped = 0
        self.malformed = 0
        self._on_version = on_version
        self._on_http = on_http
        self._versions: collections.deque[int] = collections.deque(maxlen=256)
        self._reported: int | None = None
        self._job: JobSpec | None = None
        self._task: RoundTask | None = None
        self._predictor: Predictor | None = None
        self._failed: JobSpec | None = None  # a job whose model cannot be built here
        self._failure = ""
        self._full_wanted = False  # subscribed to the full model topic
        self._reconnects_seen = 0
        self._follower = ModelFollower(
            job=config.job, limits=self.limits, max_bytes=config.max_model_bytes,
            timeout_s=config.model_timeout,
        )  # fmt: skip
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(config.max_queue)
        self._request_prefix = api.request_topic(self.topics, "")
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._idle_streak = 0
        self._activity = time.monotonic()

    # -- what is served -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Connected and subscribed: requests published from now on are answered."""
        return self._session is not None and self._session.connected

    @property
    def model(self) -> tuple[int, np.ndarray] | None:
        """(version, flat) held now, whether or not a predictor for it is ready."""
        return self._follower.model

    @property
    def _model(self) -> tuple[int, np.ndarray] | None:
        return self._follower.model

    @property
    def _gap(self) -> bool:
        return self._follower.gap

    @property
    def full_models(self) -> int:
        return self._follower.full_models

    @property
    def deltas_applied(self) -> int:
        return self._follower.deltas_applied

    def served(self) -> Served | None:
        model, predictor = self._model, self._predictor
        if model is None or predictor is None or model[1].size != predictor.num_params:
            return None
        return Served(model[0], model[1], predictor)

    @property
    def version(self) -> int | None:
        """The model version that answers requests now; None before one is ready."""
        served = self.served()
        return served.version if served is not None else None

    def _why_not(self) -> str:
        if self._job is None:
            return f"waiting for the job spec on {self.topics.jobspec}"
        if self._failed is self._job:
            return self._failure
        return f"waiting for the global model of job {self.config.job}"

    def health(self) -> api.Reply:
        served, job = self.served(), self._job
        body = {
            "version": served.version if served is not None else None,
            "model": job.model if job is not None else None,
            "job": self.config.job,
        }
        return api.Reply(200 if served is not None else 503, body)

    async def answer(self, payload: bytes, source: str = "http") -> api.Reply:
        """The reply to one request (JSON bytes), from the version held when it arrived."""
        reply = await asyncio.to_thread(
            respond, payload, self.served(), self.config.request_limits, self._why_not()
        )
        self.requests += 1
        if reply.error is not None:
            self.errors += 1
            if self.errors <= 20 or self.errors % 1000 == 0:
                log.warning("request from %s rejected (%d): %s", source, reply.status, reply.error)
        return reply

    def report(self) -> ServeReport:
        return ServeReport(
            self.config.node_id, self.requests, self.errors, self.dropped, tuple(self._versions),
            self.full_models, self.deltas_applied, self.malformed,
        )  # fmt: skip

    def _note_served(self) -> None:
        """Log (and tell `on_version`) each version as it starts answering."""
        served = self.served()
        if served is not None and served.version != self._reported:
            self._reported = served.version
            self._versions.append(served.version)
            log.info("%s: serving version %d", self.config.node_id, served.version)
            if self._on_version is not None:
                self._on_version(served.version, served.predictor.job.model)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- messages (sync and fast: decoding and bookkeeping only) ------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.startswith(self._request_prefix):
            self._on_request(topic[len(self._request_prefix) :], payload)
            return
        self._activity = time.monotonic()
        if not payload:  # a cleared retained message: the job ended; keep serving what we hold
            return
        try:
            if topic == self.topics.jobspec:
                self._on_job(decode(payload, self.limits, expect=JobSpec))
            elif topic == self.topics.task:
                task = decode(payload, self.limits, expect=RoundTask)
                if task.job == self.config.job and task != self._task:
                    self._task = task
                    self._wake.set()
            elif topic.startswith(self.topics.prefix + "/model/"):
                self._on_model_chunk(decode(payload, self.limits, expect=TensorChunk))
            elif topic.startswith(self.topics.prefix + "/delta/"):
                self._on_delta_chunk(decode(payload, self.limits, expect=TensorChunk))
        except (CodecError, ProtocolError) as exc:
            self.malformed += 1
            if self.malformed <= 20 or self.malformed % 1000 == 0:
                log.warning("%s: rejected message on %s: %s", self.config.node_id, topic, exc)

    def _on_request(self, client: str, payload: bytes) -> None:
        if not client or len(client.encode()) > self.limits.max_name_len or "\0" in client:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait((client, payload))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped <= 20 or self.dropped % 1000 == 0:
                log.warning("request queue full: dropped a request of %s", client)

    def _on_job(self, job: JobSpec) -> None:
        if job.job != self.config.job:
            raise ProtocolError(f"job spec for {job.job!r} on the topic of {self.config.job!r}")
        if job == self._job:
            return
        if self._job is not None and self._job.layout != job.layout:
            self._follower.forget()  # a vector of another model: wait for this job's
        self._job, self._predictor = job, None
        self._wake.set()

    def _on_model_chunk(self, chunk: TensorChunk) -> None:
        if self._follower.on_model(chunk, time.monotonic()) is Step.MODEL:
            self._note_served()
            self._wake.set()

    def _on_delta_chunk(self, chunk: TensorChunk) -> None:
        step = self._follower.on_delta(chunk, time.monotonic())
        if step is Step.APPLIED:
            self._note_served()
        if step is not Step.NONE:
            self._wake.set()  # applied, or a gap: wait for the full model

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> ServeReport:
        cfg = self.config
        session_cfg = SessionConfig(
            url=cfg.broker,
            client_id=f"{cfg.job}-{cfg.node_id}",
            subscriptions=(
                self.topics.jobspec,
                self.topics.task,
                self.topics.delta_all,
                api.request_all(self.topics),
            ),
            username=cfg.username,
            password=cfg.password,
            tls_ca=cfg.tls_ca,
            tls_cert=cfg.tls_cert,
            tls_key=cfg.tls_key,
            keepalive=cfg.keepalive,
            max_packet=max(2 << 20, cfg.max_request_bytes + (64 << 10)),
        )
        async with contextlib.AsyncExitStack() as stack:
            if cfg.http:
                host, port = parse_http_address(cfg.http)
                self.http = await stack.enter_async_context(
                    HttpServer(
                        host, port, predict=self.answer, health=self.health,
                        max_body=cfg.max_request_bytes,
                    )
                )  # fmt: skip
                log.info("%s: HTTP on %s", cfg.node_id, self.http.url)
                if self._on_http is not None:
                    self._on_http(self.http.url)
            session = await stack.enter_async_context(
                Session(session_cfg, self._on_message, self.meter)
            )
            self._session = session
            stack.callback(setattr, self, "_session", None)
            log.info(
                "%s: serving job %s; requests on %s",
                cfg.node_id, cfg.job, api.request_all(self.topics),
            )  # fmt: skip
            async with asyncio.TaskGroup() as tg:
                workers = [tg.create_task(self._worker(session)) for _ in range(cfg.workers)]
                try:
                    await self._follow(session)
                finally:
                    for worker in workers:
                        worker.cancel()
        self.http = None
        return self.report()

    async def _worker(self, session: Session) -> None:
        while True:
            client, payload = await self._queue.get()
            reply = await self.answer(payload, source=f"mqtt client {client}")
            try:
                await session.publish(api.response_topic(self.topics, client), reply.encode())
            except TransportError as exc:
                log.warning("reply to %s not sent: %s", client, exc)

    async def _follow(self, session: Session) -> None:
        cfg = self.config
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(cfg.resync_s * 2 ** min(self._idle_streak, 6)):
                    await self._wake.wait()
            except TimeoutError:
                if time.monotonic() - self._activity < cfg.resync_s:
                    continue  # bytes are still arriving: nothing is lost yet
                self._idle_streak += 1
                await self._resync(session)
                continue
            self._idle_streak = 0
            self._wake.clear()
            await self._step(session)

    async def _step(self, session: Session) -> None:
        job = self._job
        if job is not None and self._predictor is None and self._failed is not job:
            try:
                predictor = await asyncio.to_thread(Predictor, job)
            except FedmqError as exc:
                self._failed, self._failure = job, str(exc)
                log.error("%s: cannot serve job %s: %s", self.config.node_id, job.job, exc)
            else:
                if self._job is job:
                    self._predictor = predictor
                    self._note_served()
        await self._sync_model(session)

    async def _sync_model(self, session: Session) -> None:
        """Listen to the full (retained) model only while we lack the current version."""
        if session.reconnects != self._reconnects_seen:  # a new connection has no such topic
            self._reconnects_seen, self._full_wanted = session.reconnects, False
        task = self._task
        held = self._model[0] if self._model is not None else None
        # One version behind: that round's delta is on its way. Further behind, no model, a
        # delta that did not apply, or far ahead (a restarted cloud): only the full model helps.
        behind = (
            held is None
            or self._gap
            or (task is not None and not task.version - 1 <= held <= task.version + 1)
        )
        if behind and not self._full_wanted:
            self._full_wanted = await session.subscribe(self.topics.model_all)
        elif (
            not behind
            and self._full_wanted
            and (task is None or held is None or held >= task.version)
        ):
            self._full_wanted = False
            await session.unsubscribe(self.topics.model_all)

    async def _resync(self, session: Session) -> None:
        """Nothing arrived for a while: ask the broker again for what we may have missed."""
        task = self._task
        held = self._model[0] if self._model is not None else None
        if self._job is None:
            topic = self.topics.jobspec
        elif held is None or self._gap or (task is not None and held != task.version):
            topic = self.topics.model_all
        else:
            topic = self.topics.task
        log.debug("%s: idle; re-fetching %s", self.config.node_id, topic)
        await session.resubscribe(topic)
        if topic == self.topics.model_all:
            self._full_wanted = True  # leave it again once the model is complete
