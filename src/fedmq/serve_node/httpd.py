"""A tiny HTTP/1.1 server on asyncio streams (stdlib only): `POST /predict`, `GET /healthz`.

One request per connection (`Connection: close`). The request line, the headers and the body are
bounded, a body needs `Content-Length` (no chunked encoding), and reading a request has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType

from fedmq.errors import ConfigError
from fedmq.serve_node.api import Reply, error_reply

log = logging.getLogger(__name__)

MAX_LINE = 8 << 10  # bytes of the request line and of each header line
MAX_HEADERS = 64  # header lines
MAX_HEAD = 32 << 10  # bytes of all header lines together


def parse_http_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--http {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080 (port 0: any)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpError(Exception):
    """A request the server answers with `status` and closes (never leaves this module)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lower-case names
    body: bytes


async def _line(reader: asyncio.StreamReader, status: int, what: str) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise HttpError(status, f"{what} longer than {MAX_LINE} bytes") from None
    return line.rstrip(b"\r\n")


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, max_body: int
) -> Request:
    """Read one request; `writer` answers `Expect: 100-continue`. HttpError on anything bad.

    `reader` must have been created with `limit=MAX_LINE`.
    """
    line = await _line(reader, 414, "request line")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise HttpError(400, "malformed request line; expected e.g. POST /predict HTTP/1.1")
    method, target = parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace")
    headers: dict[str, str] = {}
    size = lines = 0
    while True:
        line = await _line(reader, 431, "a header line")
        if not line:
            break
        size, lines = size + len(line), lines + 1
        if lines > MAX_HEADERS or size > MAX_HEAD:
            raise HttpError(431, f"over {MAX_HEADERS} header lines or {MAX_HEAD} bytes")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        key = name.lower()
        if key in headers and key in {"content-length", "transfer-encoding"}:
            raise HttpError(400, f"{name} given twice")
        headers[key] = value.strip()
    body = b""
    if "transfer-encoding" in headers:
        raise HttpError(411, "chunked bodies are not accepted; send Content-Length")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or len(length) > 18:
            raise HttpError(400, "Content-Length must be a non-negative integer")
        if int(length) > max_body:
            raise HttpError(413, f"body of {length} bytes; the limit is {max_body}")
        if headers.get("expect", "").lower() == "100-continue" and writer is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        try:
            body = await reader.readexactly(int(length))
        except asyncio.IncompleteReadError:
            raise HttpError(400, "body shorter than Content-Length") from None
    elif method == "POST":
        raise HttpError(411, "POST needs a Content-Length header")
    return Request(method, target.split("?", 1)[0], headers, body)


def encode_response(reply: Reply, extra: dict[str, str] | None = None) -> bytes:
    body = reply.encode()
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    head = [
        f"HTTP/1.1 {reply.status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (extra or {}).items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class HttpServer:
    """`async with HttpServer(host, port, predict=..., health=...) as http: http.address`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        predict: Callable[[bytes], Awaitable[Reply]],
        health: Callable[[], Reply],
        max_body: int,
        read_timeout: float = 10.0,  # seconds to receive one whole request
        max_connections: int = 64,  # open connections; more are answered 503 at once
    ) -> None:
        self.host, self.port = host, port
        self._predict, self._health = predict, health
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.requests = 0
        self.errors = 0  # answered with a 4xx or 5xx status
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0, the port the system picked."""
        if self._server is None or not self._server.sockets:
            raise ConfigError("the HTTP server is not running")
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def __aenter__(self) -> HttpServer:
        if not is_loopback(self.host):
            log.warning("HTTP on %s is not loopback: anyone who reaches it can query", self.host)
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, limit=MAX_LINE
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # a hanging client must not hold up shutdown
                writer.transport.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        extra: dict[str, str] = {}
        try:
            if len(self._writers) > self.max_connections:
                reply = error_reply(503, "too many connections", version=None)
            else:
                reply, extra = await self._answer(reader, writer)
            self.requests += 1
            self.errors += reply.status >= 400
            writer.write(encode_response(reply, extra))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nobody to answer
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[Reply, dict[str, str]]:
        try:
            async with asyncio.timeout(self.read_timeout):
                request = await read_request(reader, writer, self.max_body)
        except TimeoutError:
            return error_reply(408, "request not received in time", version=None), {}
        except HttpError as exc:
            log.info("HTTP request rejected (%d): %s", exc.status, exc)
            return error_reply(exc.status, str(exc), version=None), {}
        routes = {"/predict": "POST", "/healthz": "GET"}
        allowed = routes.get(request.path)
        if allowed is None:
            return error_reply(404, f"no such path; try {', '.join(routes)}", version=None), {}
        if request.method != allowed:
            reply = error_reply(405, f"{request.path} takes {allowed}", version=None)
            return reply, {"Allow": allowed}
        if request.path == "/healthz":
            return self._health(), {}
        return await self._predict(request.body), {}
