"""One async MQTT session type for both nodes, on aiomqtt 2.x (paho-mqtt underneath).

A `Session` keeps itself connected: it reconnects with exponential backoff, re-subscribes and
re-publishes its birth message after every reconnect, and lets `publish` wait out a reconnect.
Its `ByteMeter` counts what crossed the socket, and a `PacketFilter` on the read side reads past
an oversized inbound PUBLISH (counted, logged, acknowledged) before paho buffers any of it (paho
has no such limit for MQTT 3.1.1); dropping the connection instead would meet the same retained
message on every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from fedmq.errors import ConfigError, FedmqError, TransportError
from fedmq.transport.framing import Dropped, PacketFilter
from fedmq.transport.meter import ByteMeter
from fedmq.transport.nodelay import set_nodelay

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://host:port` or `mqtts://host:port` (or `tcp://`, `ssl://`); ports 1883/8883."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    scheme = parts.scheme.lower()
    if scheme not in {"mqtt", "tcp", "mqtts", "ssl"}:
        raise ConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    tls = scheme in {"mqtts", "ssl"}
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: bad port") from exc
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r}: no host")
    return BrokerAddress(parts.hostname, port, tls)


@dataclass(frozen=True)
class SessionConfig:
    url: str
    client_id: str
    subscriptions: tuple[str, ...] = ()
    will: tuple[str, bytes] | None = None  # retained, QoS 1: sent by the broker if we vanish
    birth: tuple[str, bytes] | None = None  # retained, QoS 1: published after every (re)connect
    goodbye: tuple[str, bytes] | None = None  # retained, QoS 1: published on a clean exit
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None  # CA file for mqtts://; None uses the system store
    tls_cert: str | None = None  # client certificate (PEM), for brokers that require one
    tls_key: str | None = None  # its private key (PEM); None: inside tls_cert
    keepalive: int = 20  # seconds; the broker declares us dead after 1.5x this
    connect_timeout: float = 30.0  # how long __aenter__ waits for the first connection
    progress_every: float = 5.0  # seconds between "still no connection" reports meanwhile
    backoff_min: float = 0.2  # first reconnect delay, doubled per failure ...
    backoff_max: float = 10.0  # ... up to this, with +-25% jitter
    publish_timeout: float = 60.0  # one publish, across reconnects
    ack_timeout: float = 10.0  # SUBACK/PUBACK wait while (re)connecting; then reconnect
    max_packet: int = 2 << 20  # inbound packet limit in bytes
    max_inflight: int = 20  # concurrent unacknowledged QoS 1 publishes


class Session:
    """`async with Session(cfg, on_message) as s: await s.publish(topic, payload)`."""

    def __init__(
        self,
        config: SessionConfig,
        on_message: MessageHandler,
        meter: ByteMeter | None = None,
        *,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        """`on_wait` gets the "still no connection" reports while connecting (default: log)."""
        self.config = config
        self._on_wait = on_wait
        self.address = parse_broker_url(config.url)
        self._tls = _tls_context(config, self.address.tls)  # hostname checked; no insecure mode
        self.meter = meter or ByteMeter()
        self.reconnects = 0
        self.handler_errors = 0
        self.oversized = 0  # inbound PUBLISH packets over max_packet, read past and dropped
        self._on_message = on_message
        self._birth = config.birth
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self._window = asyncio.Semaphore(config.max_inflight)
        self._lost_event = asyncio.Event()  # set when the current connection ends

    def set_birth(self, payload: bytes) -> None:
        """Change the birth payload re-published after every reconnect (same topic)."""
        if self._birth is None:
            raise ValueError("this session has no birth topic")
        self._birth = (self._birth[0], payload)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def __aenter__(self) -> Session:
        cfg = self.config
        self._task = asyncio.create_task(self._run(), name=f"mqtt-{cfg.client_id}")
        log.info("%s: connecting to %s ...", cfg.client_id, cfg.url)
        started = time.monotonic()
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                while not self._connected.is_set() and not self._task.done():
                    connected = asyncio.ensure_future(self._connected.wait())
                    done, _ = await asyncio.wait(
                        [self._task, connected],
                        timeout=cfg.progress_every,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    connected.cancel()
                    if not done:  # a user waiting in silence cannot tell a slow broker from none
                        self._report_wait(time.monotonic() - started)
        except TimeoutError:
            await self._stop()
            raise TransportError(
                f"{cfg.client_id}: no connection to {cfg.url} after {cfg.connect_timeout:g} s "
                f"({self.last_error}){_tls_hint(cfg, self.address.tls)}"
            ) from None
        if not self._connected.is_set():
            await self._stop()
            raise TransportError(f"{cfg.client_id}: {self._fatal}") from self._fatal
        return self

    @property
    def last_error(self) -> str:
        """Why the last connection attempt failed, in a few words ("connection refused")."""
        return _reason(self._fatal) if self._fatal is not None else "no answer yet"

    def _report_wait(self, elapsed: float) -> None:
        seconds = f"{elapsed:.0f}" if elapsed >= 10 else f"{elapsed:.1f}"
        message = f"still no connection to {self.config.url} after {seconds} s ({self.last_error})"
        if self._on_wait is not None:
            self._on_wait(message)
        else:
            log.warning("%s: %s", self.config.client_id, message)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.config.goodbye is not None and self.connected:
            topic, payload = self.config.goodbye
            with contextlib.suppress(FedmqError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.publish(topic, payload, retain=True)
        await self._stop()

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._connected.clear()

    def _new_client(self) -> aiomqtt.Client:
        cfg = self.config
        will = None
        if cfg.will is not None:
            will = aiomqtt.Will(topic=cfg.will[0], payload=cfg.will[1], qos=1, retain=True)
        client = aiomqtt.Client(
            self.address.host,
            self.address.port,
            identifier=cfg.client_id,
            username=cfg.username,
            password=cfg.password,
            will=will,
            clean_session=True,
            keepalive=cfg.keepalive,
            timeout=cfg.publish_timeout,
            max_inflight_messages=cfg.max_inflight,
            tls_context=self._tls,
        )
        self._install_meter(client)
        _install_nodelay(client)
        return client

    def _install_meter(self, client: aiomqtt.Client) -> None:
        # paho reads and writes the socket only through these two methods; shadowing them on the
        # instance meters exactly what crossed the socket and filters inbound packet sizes.
        paho: Any = client._client
        send, recv = paho._sock_send, paho._sock_recv
        packets, meter = PacketFilter(self.config.max_packet), self.meter
        pending = bytearray()  # passed-on bytes paho has not asked for yet: at most a header

        def metered_send(buf: bytes | bytearray) -> int:
            n: int = send(buf)
            meter.add_sent(n)
            return n

        def metered_recv(bufsize: int) -> bytes:
            # paho asks for 1 byte (type), 1 per length byte, then the body: `next_read` keeps
            # every read inside one packet, so `pending` never holds bytes of a later packet.
            while not pending:
                data: bytes = recv(packets.next_read(bufsize))  # BlockingIOError: paho waits
                meter.add_received(len(data))
                if not data:
                    return data  # the broker closed the connection
                try:
                    passed, dropped = packets.feed(data)
                except FedmqError as exc:
                    log.warning("%s: dropping connection: %s", self.config.client_id, exc)
                    raise ConnectionAbortedError(str(exc)) from exc
                for packet in dropped:
                    self._oversized(paho, packet)
                if packets.dropping or dropped:
                    # Bytes paho never sees: its keep-alive must still count them, or reading
                    # past a large message on a slow link would end the connection anyway.
                    with paho._msgtime_mutex:
                        paho._last_bytes_received = time.monotonic()  # paho's clock
                pending.extend(passed)
            out = bytes(pending[:bufsize])
            del pending[:bufsize]
            return out

        paho._sock_send = metered_send
        paho._sock_recv = metered_recv

    def _oversized(self, paho: Any, packet: Dropped) -> None:
        """Count and log a PUBLISH read past, and acknowledge it as paho would have.

        Unacknowledged, a QoS 1 message holds one of the broker's in-flight slots for this
        connection until it ends (Mosquitto 2 resends only on reconnect): a few would stall
        every later delivery. paho never saw it, so it cannot mind the acknowledgement.
        """
        self.oversized += 1
        if self.oversized <= 20 or self.oversized % 1000 == 0:
            log.warning(
                "%s: dropped a %d B message on %s: over the %d B packet limit (%d so far)",
                self.config.client_id, packet.size, packet.topic, self.config.max_packet,
                self.oversized,
            )  # fmt: skip
        if packet.packet_id is not None:
            if packet.qos == 1:
                paho._send_puback(packet.packet_id)
            elif packet.qos == 2:  # paho answers the PUBREL that follows for unknown ids too
                paho._send_pubrec(packet.packet_id)

    async def _run(self) -> None:
        delay = self.config.backoff_min
        first = True
        while True:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    self._lost_event = lost = asyncio.Event()
                    stack.callback(lost.set)  # however this connection ends
                    client = await self._establish(stack)
                    if not first:
                        self.reconnects += 1
                        log.info("%s: reconnected to %s", self.config.client_id, self.config.url)
                    first, delay = False, self.config.backoff_min
                    self._client = client
                    self._connected.set()
                    async for message in client.messages:
                        self._dispatch(str(message.topic), message.payload)
            except aiomqtt.MqttCodeError as exc:
                if _is_refusal(exc):
                    # Bad credentials or not authorised: retrying cannot help.
                    self._fatal = TransportError(f"broker refused the connection: {exc}")
                    log.error("%s: %s", self.config.client_id, self._fatal)
                    self._connected.clear()
                    return
                self._lost(exc)
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                bad_cert = _tls_verify_error(exc)
                if bad_cert is not None and first:
                    # A broker we cannot authenticate. Later on we retry: a rotation may fix it.
                    self._fatal = TransportError(
                        f"TLS: cannot verify the certificate of {self.config.url}: {bad_cert} "
                        f"(tls_ca: {self.config.tls_ca or 'the system store'})"
                    )
                    log.error("%s: %s", self.config.client_id, self._fatal)
                    return
                self._lost(exc)
            self._client = None
            self._connected.clear()
            await asyncio.sleep(delay * random.uniform(0.75, 1.25))
            delay = min(delay * 2, self.config.backoff_max)

    async def _establish(self, stack: contextlib.AsyncExitStack) -> aiomqtt.Client:
        """Connect, subscribe and publish the birth, all within `ack_timeout`.

        aiomqtt waits for CONNACK without a deadline; a link that accepts TCP and then dies
        (an outage, a half-open NAT) would otherwise hang the session for good.
        """
        client = self._new_client()
        entered = False
        try:
            async with asyncio.timeout(self.config.ack_timeout):
                await stack.enter_async_context(client)
                entered = True
                for topic in self.config.subscriptions:
                    await client.subscribe(topic, qos=1)
                if self._birth is not None:
                    await client.publish(*self._birth, qos=1, retain=True)
        except BaseException:
            if not entered:
                _close_unfinished(client)
            raise
        return client

    def _lost(self, exc: BaseException) -> None:
        self._fatal = exc
        if self._connected.is_set():
            log.warning("%s: connection lost (%s); reconnecting", self.config.client_id, exc)
        else:
            log.debug("%s: connect failed (%s)", self.config.client_id, exc)

    def _dispatch(self, topic: str, payload: Any) -> None:
        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        try:
            self._on_message(topic, bytes(payload))
        except Exception:  # a handler bug must not take the session down
            self.handler_errors += 1
            log.exception("%s: message handler failed on %s", self.config.client_id, topic)

    async def subscribe(self, topic: str) -> bool:
        """Subscribe now (not kept across reconnects: the caller re-asks when it needs to)."""
        client = self._client
        if client is None:
            return False
        try:
            await client.subscribe(topic, qos=1)
        except aiomqtt.MqttError as exc:
            log.debug("%s: subscribe to %s failed: %s", self.config.client_id, topic, exc)
            return False
        return True

    async def unsubscribe(self, topic: str) -> None:
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(topic)

    async def resubscribe(self, topic: str) -> None:
        """Subscribe to `topic` again, so the broker re-sends its retained messages.

        The recovery for a delivery the broker dropped (amqtt gives up on a QoS 1 message
        after 5 s without PUBACK and never re-sends it).
        """
        client = self._client
        if client is None:
            return  # a reconnect re-subscribes anyway
        try:
            await client.unsubscribe(topic)
            await client.subscribe(topic, qos=1)
        except aiomqtt.MqttError as exc:
            log.debug("%s: resubscribe to %s failed: %s", self.config.client_id, topic, exc)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish once the session is connected; on a lost connection, retry after reconnect."""
        # 5 bytes of fixed header at most, 2 + topic, 2 for the packet id.
        size = len(payload) + len(topic.encode()) + 9
        if size > self.config.max_packet:
            raise TransportError(
                f"{self.config.client_id}: a {size} B packet to {topic} is over the "
                f"{self.config.max_packet} B limit; lower --max-payload"
            )
        try:
            async with asyncio.timeout(self.config.publish_timeout), self._window:
                while True:
                    await self._connected.wait()
                    client, lost = self._client, self._lost_event
                    if client is None:
                        await asyncio.sleep(0.05)
                        continue
                    try:
                        if await self._publish_once(client, lost, topic, payload, qos, retain):
                            return
                    except aiomqtt.MqttError as exc:
                        # The run loop notices a dead connection and reconnects; we retry.
                        log.debug(
                            "%s: publish on %s failed (%s); retrying",
                            self.config.client_id,
                            topic,
                            exc,
                        )
                        await asyncio.sleep(0.1)
        except TimeoutError:
            raise TransportError(
                f"{self.config.client_id}: publish to {topic} did not complete in "
                f"{self.config.publish_timeout:.0f} s"
            ) from None

    @staticmethod
    async def _publish_once(
        client: aiomqtt.Client,
        lost: asyncio.Event,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
    ) -> bool:
        """True once acknowledged; False if the connection died first (aiomqtt would keep
        waiting for a PUBACK that can no longer come, however slow or fast the link)."""
        publish = asyncio.ensure_future(client.publish(topic, payload, qos=qos, retain=retain))
        dropped = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({publish, dropped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            dropped.cancel()
            if not publish.done():
                publish.cancel()
        if not publish.done() or publish.cancelled():
            return False
        publish.result()  # raises MqttError if it failed
        return True

    async def publish_all(
        self, topics_payloads: Sequence[tuple[str, bytes]], *, retain: bool = False
    ) -> None:
        """Publish many messages with up to `max_inflight` awaiting their PUBACK at once."""
        async with asyncio.TaskGroup() as tg:
            for topic, payload in topics_payloads:
                tg.create_task(self.publish(topic, payload, retain=retain))


def _tls_context(cfg: SessionConfig, tls: bool) -> ssl.SSLContext | None:
    """The client TLS context for mqtts://: verifies the broker's chain and hostname."""
    given = cfg.tls_ca or cfg.tls_cert or cfg.tls_key
    if not tls:
        if given:
            raise ConfigError(f"{cfg.url}: TLS files given for a plain mqtt:// URL; use mqtts://")
        return None
    if cfg.tls_key and not cfg.tls_cert:
        raise ConfigError("tls_key needs tls_cert (the client certificate)")
    try:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS CA file {cfg.tls_ca}: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.tls_cert:
        try:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS client certificate {cfg.tls_cert}: {exc}") from exc
    return ctx


def _tls_verify_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed under `exc` (aiomqtt re-raises it `from None`)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _install_nodelay(client: aiomqtt.Client) -> None:
    """Open paho's TCP socket with TCP_NODELAY (before any TLS wrap): paho leaves Nagle on,
    and a round of small messages would wait on delayed ACKs (`transport.nodelay`)."""
    paho: Any = client._client
    create = paho._create_socket_connection

    def create_nodelay() -> socket.socket:
        sock: socket.socket = create()
        set_nodelay(sock)
        return sock

    paho._create_socket_connection = create_nodelay


def _close_unfinished(client: aiomqtt.Client) -> None:
    """Close the socket of a connect cut short (no CONNACK in time, or cancelled).

    aiomqtt closes only a connection it finished opening; this one would stay open with its
    reader task pending until garbage collection, after its event loop has gone.
    """
    paho: Any = client._client
    with contextlib.suppress(Exception):
        paho._sock_close()


def _reason(exc: BaseException) -> str:
    """The innermost OS reason under `exc` ("connection refused"), else its own text."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no MQTT answer in time"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror[0].lower() + seen.strerror[1:]
        seen = seen.__cause__ or seen.__context__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc)) or type(exc).__name__
    return text[0].lower() + text[1:]


def _tls_hint(cfg: SessionConfig, tls: bool) -> str:
    # Under TLS 1.3 a broker that wants a client certificate hangs up after the handshake,
    # and paho waits for a CONNACK that never comes: say what is likely missing.
    if tls and not cfg.tls_cert:
        return " (if the broker requires client certificates, set tls_cert and tls_key)"
    return ""


def _is_refusal(exc: aiomqtt.MqttCodeError) -> bool:
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    # CONNACK 4 (bad user name or password) and 5 (not authorised), and their MQTT 5 forms.
    return value in {4, 5, 134, 135}
