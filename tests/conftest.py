"""Shared fixtures: real brokers on loopback ports (embedded amqtt, and a Mosquitto we start)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from fedmq.broker import BrokerConfig, EmbeddedBroker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerThread:
    """The embedded broker on its own event loop in a thread, as if in another process."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.broker: EmbeddedBroker | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with EmbeddedBroker(self.config) as broker:
                self.broker = broker
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or self.broker is None:
            raise RuntimeError(f"embedded broker did not start: {self._error}")
        return self.broker.url

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def amqtt_broker() -> Iterator[BrokerThread]:
    thread = BrokerThread(BrokerConfig(port=0))
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def amqtt_url(amqtt_broker: BrokerThread) -> str:
    assert amqtt_broker.broker is not None
    return amqtt_broker.broker.url


def mosquitto_command(folder: Path, port: int) -> list[str]:
    """argv of a real Mosquitto on `port` (loopback), with fedmq's shipped settings."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does this)")
    shipped = Path(__file__).parents[1] / "src/fedmq/broker/configs/mosquitto.conf"
    lines = [
        line
        for line in shipped.read_text().splitlines()
        if not line.startswith("listener") and not line.startswith("log_")
    ]
    conf = folder / f"mosquitto-{port}.conf"
    conf.write_text("\n".join([f"listener {port} 127.0.0.1", *lines, "log_dest stderr"]) + "\n")
    return [binary, "-c", str(conf)]


@contextlib.contextmanager
def broker_process(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A broker process, once it accepts connections on `port`; stopped on exit."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                proc.kill()
                pytest.fail(f"{argv[0]} did not start: {err}")
            time.sleep(0.05)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def mosquitto_url(tmp_path: Path) -> Iterator[str]:
    """A real Mosquitto on an ephemeral loopback port, with fedmq's shipped settings."""
    port = free_port()
    with broker_process(mosquitto_command(tmp_path, port), port):
        yield f"mqtt://127.0.0.1:{port}"


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker_url(broker_kind: str, request: pytest.FixtureRequest) -> str:
    """The same test against the embedded amqtt broker and against Mosquitto."""
    fixture = "amqtt_url" if broker_kind == "amqtt" else "mosquitto_url"
    return str(request.getfixturevalue(fixture))


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


# CI runs derandomized property tests: a red CI must be reproducible, not a lucky draw.
if os.environ.get("CI"):
    settings.register_profile("ci", derandomize=True, deadline=None)
    settings.load_profile("ci")
