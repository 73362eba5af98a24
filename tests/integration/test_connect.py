"""Connecting to a broker that is not there: progress at once, the reason, then one line.

A refused loopback port stands for the broker that is down; the embedded one for the broker
that is up, to check that the cloud says "waiting for edges" only once it is connected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedmq.errors import TransportError
from fedmq.transport import Session, SessionConfig
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.integration

FEDMQ = [sys.executable, "-m", "fedmq.cli.main"]


def refused_url() -> str:
    return f"mqtt://127.0.0.1:{free_port()}"  # bound and released: nothing listens


async def test_the_session_reports_while_it_waits_and_fails_in_one_line() -> None:
    url = refused_url()
    reports: list[tuple[float, str]] = []
    cfg = SessionConfig(url, "t-refused", connect_timeout=1.6, progress_every=0.5)
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        async with Session(cfg, lambda t, p: None, on_wait=lambda m: reports.append(
            (time.monotonic() - started, m))):  # fmt: skip
            pass
    elapsed = time.monotonic() - started
    assert reports, "no progress while the broker refused"
    first_at, first = reports[0]
    assert first_at < 1.0
    assert first == f"still no connection to {url} after 0.5 s (connection refused)"
    assert len(reports) == 3  # at 0.5, 1.0 and 1.5 s, then the limit
    message = str(info.value)
    assert "\n" not in message
    assert message == f"t-refused: no connection to {url} after 1.6 s (connection refused)"
    assert 1.5 < elapsed < 3.0


async def test_without_a_listener_the_session_logs_its_progress(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = refused_url()
    cfg = SessionConfig(url, "t-logged", connect_timeout=0.8, progress_every=0.3)
    with (
        caplog.at_level(logging.INFO, logger="fedmq.transport.session"),
        pytest.raises(TransportError),
    ):
        async with Session(cfg, lambda t, p: None):
            pass
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"t-logged: connecting to {url} ..."
    assert f"t-logged: still no connection to {url} after 0.3 s (connection refused)" in messages
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def _read_lines(proc: subprocess.Popen[str], lines: list[tuple[float, str]], t0: float) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.monotonic() - t0, line.rstrip("\n")))


def test_an_edge_says_where_it_connects_at_once_then_why_it_cannot() -> None:
    url = refused_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*FEDMQ, "edge", "--broker", url, "--id", "edge-0", "--connect-timeout", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=_read_lines, args=(proc, lines, t0), daemon=True)
    reader.start()
    proc.wait(timeout=60)
    reader.join(5)
    assert proc.stderr is not None
    err = proc.stderr.read()  # a line or two: it never fills the pipe
    assert proc.returncode == 2
    assert (
        err.strip() == f"fedmq edge: error: no connection to {url} after 6 s (connection refused)"
    )
    texts = [text for _, text in lines]
    assert texts[0] == f"fedmq edge edge-0: connecting to {url} ..."
    assert f"fedmq edge edge-0: still no connection to {url} after 5.0 s (connection refused)" in (
        texts
    )
    # "connecting" comes with the start, seconds before the first report and the error.
    still_at = next(at for at, text in lines if "still no connection" in text)
    assert still_at - lines[0][0] > 4.0


async def test_the_cloud_waits_for_edges_only_once_connected(
    amqtt_url: str, tmp_path: Path
) -> None:
    from fedmq.codec import Status, decode

    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    down = await asyncio.to_thread(
        subprocess.run,
        [*FEDMQ, "cloud", "--broker", refused_url(), "--connect-timeout", "0.5",
         "--out", str(tmp_path / "down")],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert down.returncode == 2 and "waiting for" not in down.stdout
    assert "connection refused" in down.stderr and len(down.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "down").exists()  # nothing started

    statuses: list[Status] = []
    watch = SessionConfig(amqtt_url, "t-watch", subscriptions=("fedmq/digits/status/cloud",))
    async with Session(
        watch, lambda t, p: statuses.append(decode(p, expect=Status)) if p else None
    ):
        up = subprocess.Popen(  # noqa: ASYNC220 - returns at once; reads go to threads
            [*FEDMQ, "cloud", "--broker", amqtt_url, "--clients", "2", "--start-timeout", "60",
             "--out", str(tmp_path / "up")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert up.stdout is not None
            seen = []
            while not seen or "waiting for" not in seen[-1]:
                line = await asyncio.to_thread(up.stdout.readline)
                assert line, seen
                seen.append(line.strip())
            assert seen[0] == f"fedmq cloud: connecting to {amqtt_url} ..."
            assert seen[1] == f"fedmq cloud: connected to {amqtt_url}"
            assert "waiting for 2 edges" in seen[-1]
            await wait_until(lambda: any(s.online for s in statuses), timeout=30)
            # SIGTERM unwinds it: the goodbye goes out, and it says so in one line.
            up.terminate()
            assert await asyncio.to_thread(up.wait, 20) == 143
            await wait_until(lambda: not statuses[-1].online, timeout=5)
            assert up.stderr is not None
            err = up.stderr.read().strip().splitlines()
            assert err[-1] == "fedmq cloud: stopped by SIGTERM", err
        finally:
            if up.poll() is None:
                up.kill()
                up.wait(10)


async def test_a_listener_that_never_answers_is_reported_and_its_sockets_closed() -> None:
    """TCP accepted, no CONNACK: each try is given up after ack_timeout and its socket closed
    (not left open until garbage collection), and the reason says what happened."""
    accepted: list[asyncio.StreamReader] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(reader)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"mqtt://127.0.0.1:{port}"
    reports: list[str] = []
    cfg = SessionConfig(url, "t-mute", connect_timeout=1.5, progress_every=0.7,
                        ack_timeout=0.3, backoff_max=0.2)  # fmt: skip
    async with server:
        with pytest.raises(TransportError) as info:
            async with Session(cfg, lambda t, p: None, on_wait=reports.append):
                pass
        assert len(accepted) >= 2
        for reader in accepted:  # each given-up connection is closed from our side
            async with asyncio.timeout(2):
                while await reader.read(4096):
                    pass
    assert str(info.value) == (
        f"t-mute: no connection to {url} after 1.5 s (no MQTT answer in time)"
    )
    assert reports and reports[0].endswith("(no MQTT answer in time)")


def test_run_on_an_external_broker_connects_before_its_banner(
    amqtt_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedmq.cli.main import main

    code = main(["run", "--broker", amqtt_url, "--rounds", "1", "--clients", "2",
                 "--local-epochs", "1", "--out", str(tmp_path / "run"), "--quiet"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:2] == [f"fedmq run: connecting to {amqtt_url} ...",
                         f"fedmq run: connected to {amqtt_url}"]  # fmt: skip
    assert lines[2].startswith("fedmq run: 2 edges, 1 rounds,")
    assert (tmp_path / "run" / "summary.json").exists()
