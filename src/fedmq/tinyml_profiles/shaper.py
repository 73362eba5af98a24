"""A userspace link emulator: a loopback TCP relay per edge, shaped per direction.

Each direction is a token bucket at the profile's rate plus a one-way delay (half the RTT, with
jitter, order kept); outages cut every connection and refuse new ones for a while. A bounded
queue per direction gives the sender TCP backpressure, as a real narrow link would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from fedmq.tinyml_profiles.profiles import LinkProfile
from fedmq.transport import ByteMeter
from fedmq.transport.nodelay import stream_nodelay

log = logging.getLogger(__name__)

_READ = 4096  # bytes per read: the granularity of shaping


@dataclass
class ShaperStats:
    connections: int = 0
    outages: int = 0
    refused: int = 0


class LinkShaper:
    """`async with LinkShaper(link, "127.0.0.1", 1883) as s: connect to s.port instead`."""

    def __init__(
        self,
        link: LinkProfile,
        upstream_host: str,
        upstream_port: int,
        *,
        seed: int = 0,
        meter: ByteMeter | None = None,
    ) -> None:
        self.link = link
        self.upstream = (upstream_host, upstream_port)
        self.meter = meter or ByteMeter()  # sent = uplink bytes delivered, received = downlink
        self.stats = ShaperStats()
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._down = False
        self._outage_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def __aenter__(self) -> LinkShaper:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        if self.link.outage_every_s > 0 and self.link.outage_s > 0:
            self._outage_task = asyncio.create_task(self._outages())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._outage_task is not None:
            self._outage_task.cancel()
        if self._server is not None:
            self._server.close()
        self._cut()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        # Let connection handlers finish rather than be cancelled: Python 3.11's stream server
        # reports a cancelled handler as an "unhandled exception".
        if self._handlers:
            await asyncio.wait(self._handlers)
        if self._server is not None:
            await self._server.wait_closed()

    async def _outages(self) -> None:
        while True:
            await asyncio.sleep(self._rng.expovariate(1.0 / self.link.outage_every_s))
            self.stats.outages += 1
            log.info("link outage for %.1f s", self.link.outage_s)
            self._down = True
            self._cut()
            await asyncio.sleep(self.link.outage_s)
            self._down = False

    def _cut(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            self.stats.refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("shaper: upstream %s:%d unreachable: %s", *self.upstream, exc)
            writer.close()
            return
        self.stats.connections += 1
        stream_nodelay(writer)  # both legs: a relay must not add Nagle stalls of its own
        stream_nodelay(up_writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        self._writers.update((writer, up_writer))
        link = self.link
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, link.up_bps, self.meter.add_sent)),
            asyncio.create_task(
                self._pump(up_reader, writer, link.down_bps, self.meter.add_received)
            ),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.wait(pumps)  # wait() never raises what the pumps raised
            self._tasks.difference_update(pumps)
            if handler is not None:
                self._handlers.discard(handler)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        bps: float,
        count: Callable[[int], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        rate = bps / 8.0  # bytes per second
        delay = self.link.one_way_s
        jitter = self.link.jitter_ms / 1000.0
        # Bandwidth-delay product plus a little: what the link holds before the sender blocks.
        depth = max(4, int((rate * (2 * delay + 0.05)) / _READ) + 1)
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(depth)

        async def ingress() -> None:
            wire_free = loop.time()
            while data := await reader.read(_READ):
                # Serialisation: the bytes occupy the link for len/rate seconds.
                wire_free = max(wire_free, loop.time()) + len(data) / rate
                await queue.put((wire_free, data))
            await queue.put(None)

        async def egress() -> None:
            last = 0.0
            while (item := await queue.get()) is not None:
                sent_at, data = item
                spread = self._rng.uniform(-jitter, jitter) if jitter else 0.0
                last = max(last, sent_at + delay + spread)  # jitter never reorders bytes
                await asyncio.sleep(max(0.0, last - loop.time()))
                writer.write(data)
                await writer.drain()
                count(len(data))

        feeder = asyncio.create_task(ingress())
        try:
            await egress()
        except (ConnectionError, OSError):
            pass
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await feeder
