"""The embedded broker: amqtt on an external listener, fed through a `PacketGuard`.

We own the listening socket (so port 0 gives an ephemeral port we can report) and hand each
accepted connection to amqtt through its "external" listener type, with a reader that enforces
the maximum packet size before amqtt buffers the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from fedmq.errors import BrokerError, FedmqError
from fedmq.transport.framing import PacketGuard

log = logging.getLogger(__name__)

_LISTENER = "default"


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"  # loopback by default: exposing a broker is an explicit choice
    port: int = 1883  # 0 picks a free ephemeral port (tests, `fedmq run`)
    max_packet: int = 2 << 20  # bytes; twice the largest chunk we send, far below amqtt's 256 MiB
    allow_anonymous: bool = True  # NB amqtt: anonymous sessions get no offline queueing
    plugins: dict[str, Any] = field(default_factory=dict)  # extra amqtt plugins (auth, ACL)


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

    async def read(self, n: int = -1) -> bytes:
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
        self._broker: Any = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise BrokerError("broker is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.config.host
        return f"mqtt://[{host}]:{self.port}" if ":" in host else f"mqtt://{host}:{self.port}"

    def _amqtt_config(self) -> dict[str, Any]:
        # Giving `plugins` replaces amqtt's default set; the defaults cost ~1/3 of throughput.
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                "allow_anonymous": self.config.allow_anonymous
            },
        }
        plugins.update(self.config.plugins)
        return {
            "listeners": {_LISTENER: {"type": "external", "bind": "127.0.0.1:0"}},
            "plugins": plugins,
        }

    async def start(self) -> None:
        from amqtt.broker import Broker  # heavy import, only when a broker really starts
        from amqtt.errors import BrokerError as AmqttBrokerError

        try:
            self._broker = Broker(self._amqtt_config())
            self._broker._subscriptions = _SnapshotDict()
            await self._broker.start()
        except (AmqttBrokerError, ValueError, TypeError) as exc:
            raise BrokerError(f"amqtt failed to start: {exc}") from exc
        try:
            self._server = await asyncio.start_server(
                self._on_connect, self.config.host, self.config.port, reuse_address=True
            )
        except OSError as exc:
            await self._broker.shutdown()
            raise BrokerError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}"
                " (is another broker running there? pick another --port)"
            ) from exc
        log.info(
            "embedded broker listening on %s (max packet %d B)", self.url, self.config.max_packet
        )

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from amqtt.adapters import StreamWriterAdapter

        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self.connections += 1
        guarded = _GuardedReader(reader, writer, PacketGuard(self.config.max_packet), self._reject)
        try:
            await self._broker.external_connected(guarded, StreamWriterAdapter(writer), _LISTENER)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("client connection ended: %s", exc)
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()

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
