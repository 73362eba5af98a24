"""The embedded broker: amqtt on an external listener, fed through a `PacketGuard`.

We own the listening socket (so port 0 gives an ephemeral port we can report, and TLS is
plain asyncio) and hand each accepted connection to amqtt through its "external" listener type,
with a reader that enforces the maximum packet size before amqtt buffers the body. A password
file and a topic ACL (fedmq.security, Mosquitto's formats) plug in as amqtt plugins, and a
gate (broker.auth.ConnectGate) judges each CONNECT before amqtt acts on it: client ids are
bound to identities.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from fedmq.broker.auth import ConnectGate, parse_connect
from fedmq.errors import BrokerError, ConfigError, FedmqError, ProtocolError
from fedmq.security import Acl, PasswordFile
from fedmq.transport.framing import PacketGuard
from fedmq.transport.nodelay import stream_nodelay

log = logging.getLogger(__name__)

_LISTENER = "default"
_CONNECT_WAIT = 30.0  # seconds a new connection may take to send its CONNECT (gated brokers)


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"  # loopback by default: exposing a broker is an explicit choice
    port: int = 1883  # 0 picks a free ephemeral port (tests, `fedmq run`)
    max_packet: int = 2 << 20  # bytes; twice the largest chunk we send, far below amqtt's 256 MiB
    # True here keeps in-process uses (tests, `fedmq run`) open; `fedmq broker` defaults to False.
    allow_anonymous: bool = True  # NB amqtt: anonymous sessions get no offline queueing
    password_file: str | None = None  # mosquitto_passwd format (`fedmq passwd`); re-read on change
    acl: Acl | None = None  # topic ACL (fedmq.security.load_acl / fedmq_acl); None: no limits
    tls_cert: str | None = None  # server certificate chain, PEM: serve mqtts:// instead of mqtt://
    tls_key: str | None = None  # its private key, PEM (None: inside tls_cert)
    tls_ca: str | None = None  # CA of client certificates: require one from every client (mTLS)
    plugins: dict[str, Any] = field(default_factory=dict)  # extra amqtt plugins

    def __post_init__(self) -> None:
        if not self.allow_anonymous and self.password_file is None:
            raise ConfigError("a broker that refuses anonymous clients needs a password file")
        if (self.tls_key or self.tls_ca) and not self.tls_cert:
            raise ConfigError("tls_key and tls_ca need tls_cert (the server certificate)")

    @property
    def secured(self) -> bool:
        return self.password_file is not None or self.acl is not None or not self.allow_anonymous


class _SnapshotDict(dict[Any, Any]):
    """A dict whose iteration walks a snapshot.

    amqtt 0.12.1 iterates its subscription table with awaits inside the loop (retained delivery
    after CONNACK, broadcast); a SUBSCRIBE from another client meanwhile raises "dictionary
    changed size during iteration" and kills the connecting client's session after its CONNACK,
    so that client hangs. Seen here with 11 clients connecting at once.
    """

    def __iter__(self) -> Any:
        return iter(list(dict.keys(self)))

    def keys(self) -> Any:
        return list(dict.keys(self))

    def values(self) -> Any:
        return list(dict.values(self))

    def items(self) -> Any:
        return list(dict.items(self))


class _GuardedReader:
    """amqtt ReaderAdapter over an asyncio StreamReader that runs every byte through the guard."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        guard: PacketGuard,
        on_reject: Any,
    ) -> None:
        self._reader, self._writer, self._guard, self._on_reject = reader, writer, guard, on_reject
        self._unread = b""  # the CONNECT the gate read first, replayed to amqtt (guard fed once)

    def unread(self, data: bytes) -> None:
        self._unread = data + self._unread

    async def read(self, n: int = -1) -> bytes:
        if self._unread:
            k = len(self._unread) if n == -1 else min(n, len(self._unread))
            head, self._unread = self._unread[:k], self._unread[k:]
            return head if n in (-1, k) else head + await self.read(n - k)
        data = await (self._reader.read(n) if n == -1 else self._reader.readexactly(n))
        try:
            self._guard.feed(data)
        except FedmqError as exc:
            self._on_reject(self._writer.get_extra_info("peername"), exc)
            self._writer.close()
            # amqtt maps a reset to "no data" and ends the session cleanly.
            raise ConnectionResetError(str(exc)) from exc
        return data

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class EmbeddedBroker:
    """`async with EmbeddedBroker(BrokerConfig(port=0)) as b: print(b.url)`."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.rejected_packets = 0
        self.connections = 0
        self.acl_denials: dict[str, int] = {}  # per action: publish, subscribe, receive
        self._broker: Any = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._gate: ConnectGate | None = None  # set with a password file or ACL: binds client ids

    @property
    def port(self) -> int:
        if self._server is None:
            raise BrokerError("broker is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.config.tls_cert else "mqtt"
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{scheme}://{host}:{self.port}"

    def _amqtt_config(self) -> dict[str, Any]:
        # Giving `plugins` replaces amqtt's default set; the defaults cost ~1/3 of throughput.
        cfg = self.config
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                "allow_anonymous": cfg.allow_anonymous
            },
        }
        if cfg.secured:
            passwords = PasswordFile(cfg.password_file) if cfg.password_file else None
            self._gate = ConnectGate(passwords, cfg.acl, cfg.allow_anonymous, self._holder)
            plugins = {
                "fedmq.broker.auth.PasswordAuthPlugin": {
                    "passwords": passwords, "acl": cfg.acl, "allow_anonymous": cfg.allow_anonymous,
                },
            }  # fmt: skip
        if cfg.acl is not None:
            acl_plugin = {"acl": cfg.acl, "on_denied": self._denied}
            plugins["fedmq.broker.auth.AclTopicPlugin"] = acl_plugin
        plugins.update(cfg.plugins)
        return {
            "listeners": {_LISTENER: {"type": "external", "bind": "127.0.0.1:0"}},
            "plugins": plugins,
        }

    def _denied(self, action: str) -> None:
        self.acl_denials[action] = self.acl_denials.get(action, 0) + 1

    def _tls_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if not cfg.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TLS certificate {cfg.tls_cert} / key {cfg.tls_key or '(in the certificate)'}: "
                f"{exc}"
            ) from exc
        if cfg.tls_ca:
            try:
                ctx.load_verify_locations(cfg.tls_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"TLS client CA {cfg.tls_ca}: {exc}") from exc
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def start(self) -> None:
        from amqtt.broker import Broker  # heavy import, only when a broker really starts
        from amqtt.errors import BrokerError as AmqttBrokerError

        tls = self._tls_context()
        config = self._amqtt_config()  # reads the password file: a ConfigError names its line
        try:
            self._broker = Broker(config)
            self._broker._subscriptions = _SnapshotDict()
            await self._broker.start()
        except (AmqttBrokerError, ValueError, TypeError) as exc:
            raise BrokerError(f"amqtt failed to start: {exc}") from exc
        try:
            self._server = await asyncio.start_server(
                self._on_connect, self.config.host, self.config.port, reuse_address=True, ssl=tls
            )
        except OSError as exc:
            await self._broker.shutdown()
            raise BrokerError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}"
                " (is another broker running there? pick another --port)"
            ) from exc
        log.info(
            "embedded broker listening on %s (max packet %d B; anonymous %s; passwords %s; "
            "ACL %s; client certificates %s)", self.url, self.config.max_packet,
            "allowed" if self.config.allow_anonymous else "refused", self.config.password_file,
            self.config.acl, "required" if self.config.tls_ca else "not required",
        )  # fmt: skip

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from amqtt.adapters import StreamWriterAdapter

        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self.connections += 1
        stream_nodelay(writer)
        guarded = _GuardedReader(reader, writer, PacketGuard(self.config.max_packet), self._reject)
        try:
            if self._gate is not None and not await self._admit(self._gate, guarded, writer):
                return
            await self._broker.external_connected(guarded, StreamWriterAdapter(writer), _LISTENER)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.debug("client connection ended: %s", exc)
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    async def _admit(
        self, gate: ConnectGate, reader: _GuardedReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read the CONNECT and let the gate judge it before amqtt acts on it (broker.auth)."""
        async with asyncio.timeout(_CONNECT_WAIT):  # a silent client holds no handler for long
            packet = await reader.read(1)
            while True:  # the remaining length: 1 to 4 bytes, the guard has checked them
                byte = await reader.read(1)
                packet += byte
                if not byte[0] & 0x80:
                    break
            length = sum((b & 0x7F) << (7 * i) for i, b in enumerate(packet[1:]))
            packet += await reader.read(length) if length else b""
        try:
            refusal = await gate.refusal(parse_connect(packet))
        except ProtocolError as exc:
            log.warning("dropped connection from %s: %s", writer.get_extra_info("peername"), exc)
            return False
        if refusal is not None:
            writer.write(bytes([0x20, 0x02, 0x00, refusal]))  # CONNACK: refused, and why
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            return False
        reader.unread(packet)
        return True

    def _holder(self, client_id: str) -> str | None:
        """The username ("" anonymous) of the connected client holding `client_id`, or None."""
        held = self._broker._sessions.get(client_id) if self._broker is not None else None
        if held is None or not held[0].transitions.is_connected():
            return None
        return str(held[0].username or "")

    def _reject(self, peer: object, exc: Exception) -> None:
        self.rejected_packets += 1
        log.warning("dropped connection from %s: %s", peer, exc)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._broker is not None:
            with contextlib.suppress(Exception):  # amqtt raises on a half-started broker
                await self._broker.shutdown()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._server = None
        self._broker = None

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
