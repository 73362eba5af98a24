"""Faults injected into real processes, on the embedded broker and on Mosquitto: an edge killed
mid-run, the cloud killed and resumed from its checkpoint, the broker restarted mid-run."""

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, mosquitto_command
from tests.e2e.test_cli import ENV, FEDMQ, wait_port

pytestmark = pytest.mark.e2e


class Proc:
    """A fedmq process whose stdout lines we can wait for."""

    def __init__(self, *args: str, argv: list[str] | None = None) -> None:
        self.p = subprocess.Popen(
            argv or [*FEDMQ, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[str] = []
        self.times: list[float] = []  # when each line of `seen` was read (time.monotonic)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put((time.monotonic(), line))

    def wait_for(self, text: str, timeout: float = 120) -> float:
        """Wait for a line containing `text`; return when it was printed (time.monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            for at, line in zip(self.times, self.seen, strict=True):
                if text in line:
                    return at
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen; output: {''.join(self.seen)[-2000:]}")
            try:
                at, line = self.lines.get(timeout=min(left, 1))
            except queue.Empty:
                continue
            self.times.append(at)
            self.seen.append(line)

    def finish(self, timeout: float = 180) -> int:
        code = self.p.wait(timeout)
        time.sleep(0.05)  # the pump thread's last lines
        while not self.lines.empty():
            at, line = self.lines.get()
            self.times.append(at)
            self.seen.append(line)
        return code

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            self.p.wait(10)


def _cloud(url: str, out: Path, rounds: int, *extra: str, round_timeout: float = 8) -> Proc:
    return Proc(
        "--log-level",
        "info",
        "cloud",
        *extra,
        "--broker",
        url,
        "--clients",
        "3",
        "--rounds",
        str(rounds),
        "--local-epochs",
        "1",
        "--round-timeout",
        str(round_timeout),
        "--job",
        "faults",
        "--codec",
        "int8+zstd",
        "--out",
        str(out),
    )


SLOW = """
name = "slow-board"
description = "rounds of about 1.5 s, so faults land mid-run"
codec = "int8+zstd"
[device]
ram_bytes = 1048576
flops = 4e6
[link]
up_bps = 1000000
down_bps = 1000000
rtt_ms = 20
"""


def _edge(url: str, i: int, profile: Path) -> Proc:
    return Proc(
        "--log-level",
        "info",
        "edge",
        "--broker",
        url,
        "--id",
        f"edge-{i}",
        "--job",
        "faults",
        "--profile",
        str(profile),
    )


@pytest.fixture
def slow(tmp_path: Path) -> Path:
    path = tmp_path / "slow.toml"
    path.write_text(SLOW)
    return path


BROKERS = ["embedded", "mosquitto"]


class Deployment:
    """A broker, a cloud and three slow edges as separate processes; all killed at the end."""

    def __init__(
        self,
        tmp_path: Path,
        slow: Path,
        rounds: int,
        broker: str,
        *cloud_args: str,
        round_timeout: float = 8,
        profiles: dict[int, Path] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.kind = broker
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.slow = slow
        self.procs: list[Proc] = []
        self.broker = self.start_broker()
        self.cloud_args = cloud_args
        self.round_timeout = round_timeout
        self.cloud = self.start_cloud(rounds)
        self.edges = [self.start_edge(i, (profiles or {}).get(i, slow)) for i in range(3)]

    def start(self, *args: str, argv: list[str] | None = None) -> Proc:
        proc = Proc(*args, argv=argv)
        self.procs.append(proc)
        return proc

    def start_broker(self) -> Proc:
        if self.kind == "mosquitto":
            broker = self.start(argv=mosquitto_command(self.tmp_path, self.port))
        else:
            broker = self.start("broker", "--allow-anonymous", "--port", str(self.port))
        wait_port(self.port, broker.p)
        return broker

    def start_cloud(self, rounds: int) -> Proc:
        proc = _cloud(
            self.url, self.tmp_path / "cloud", rounds, *self.cloud_args,
            round_timeout=self.round_timeout,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def start_edge(self, i: int, profile: Path | None = None) -> Proc:
        proc = _edge(self.url, i, profile or self.slow)
        self.procs.append(proc)
        return proc

    def rows(self) -> list[dict[str, Any]]:
        lines = (self.tmp_path / "cloud" / "rounds.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines]

    def kill_all(self) -> None:
        for p in self.procs:
            p.kill()


@pytest.mark.parametrize("broker", BROKERS)
def test_an_edge_killed_mid_run_is_survived_and_catches_up(
    tmp_path: Path, slow: Path, broker: str
) -> None:
    d = Deployment(tmp_path, slow, 12, broker)
    try:
        d.cloud.wait_for("round 2/12")
        d.edges[2].kill()  # no goodbye: the broker publishes its last will
        d.cloud.wait_for("round 4/12")
        late = d.start_edge(2)  # the same edge comes back
        assert d.cloud.finish() == 0, "".join(d.cloud.seen)[-2000:]
        assert late.finish(60) == 0
        rows = d.rows()
        assert len(rows) == 12 and all(r["quorum_met"] for r in rows)
        without = [r for r in rows if "edge-2" not in r["participants"]]
        assert without, "no round ran without the killed edge"
        back = [r for r in rows if r["round"] > 4 and "edge-2" in r["participants"]]
        assert back, "the restarted edge never delivered an update"
        # It trained from the current model: the cloud accepted its update for that version.
        assert "trained" in "".join(late.seen)
    finally:
        d.kill_all()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
@pytest.mark.parametrize("broker", BROKERS)
def test_a_lost_edge_closes_its_round_at_once_not_at_the_deadline(
    tmp_path: Path, slow: Path, broker: str, sig: signal.Signals
) -> None:
    """Presence (the will, or the goodbye) ends the wait for an edge that left: the round closes
    within seconds of the kill, not at its 60 s deadline, and names the edge; the edge, back,
    takes part again."""
    slower = tmp_path / "slower.toml"
    slower.write_text(SLOW.replace("flops = 4e6", "flops = 2e6"))
    rounds = 8
    d = Deployment(tmp_path, slow, rounds, broker, round_timeout=60, profiles={2: slower})
    try:
        # Round 1 in progress, edges 0 and 1 in, the slower edge-2 still training: kill it.
        d.cloud.wait_for("round 1: update of edge-", timeout=150)
        d.cloud.wait_for("(2 of 3)", timeout=30)
        killed = time.monotonic()
        d.edges[2].kill(sig)
        left = d.cloud.wait_for("edge-2 went offline", timeout=10)
        closed = d.cloud.wait_for(f"round 1/{rounds}", timeout=10)
        print(f"\n{broker} {sig.name}: will seen {left - killed:.2f} s after the kill, "
              f"round closed {closed - killed:.2f} s after it (deadline 60 s)")  # fmt: skip
        assert closed - killed <= 3.0
        if sig == signal.SIGKILL:  # the rejoin is the same after either: checked once
            d.start_edge(2)  # back, at the speed of the others
        assert d.cloud.finish(120) == 0, "".join(d.cloud.seen)[-2000:]
        rows = d.rows()
        assert rows[0]["departed"] == ["edge-2"] and rows[0]["quorum_met"]
        assert "edge-2" not in rows[0]["participants"]
        back = any("edge-2" in r["participants"] for r in rows[1:])
        assert back == (sig == signal.SIGKILL), rows
    finally:
        d.kill_all()


@pytest.mark.parametrize("broker", BROKERS)
def test_the_broker_restarted_mid_run_is_survived(tmp_path: Path, slow: Path, broker: str) -> None:
    d = Deployment(tmp_path, slow, 6, broker)
    try:
        d.cloud.wait_for("round 2/6")
        d.broker.kill()  # every retained message and session is gone with it
        time.sleep(1.0)
        d.start_broker()
        assert d.cloud.finish() == 0, "".join(d.cloud.seen)[-2000:]
        for e in d.edges:
            assert e.finish(60) == 0
        summary = json.loads((tmp_path / "cloud" / "summary.json").read_text())
        assert summary["rounds"] == 6 and summary["final_accuracy"] > 0.5
    finally:
        d.kill_all()


@pytest.mark.parametrize("broker", BROKERS)
def test_the_cloud_killed_mid_run_resumes_from_its_checkpoint(
    tmp_path: Path, slow: Path, broker: str
) -> None:
    ckpt = tmp_path / "cloud.ckpt.npz"
    d = Deployment(tmp_path, slow, 8, broker, "--checkpoint", str(ckpt), "--resume")
    try:
        d.cloud.wait_for("round 3/8")
        # Killed once round 4 has taken in a whole update: what it acknowledged dies with it.
        d.cloud.wait_for("round 4: update of edge-")
        d.cloud.kill()  # SIGKILL: no goodbye, no clean-up, whatever was in flight is lost
        first = [r["round"] for r in d.rows()]
        again = d.start_cloud(8)
        assert again.finish() == 0, "".join(again.seen)[-3000:]
        out = "".join(again.seen)
        assert "resumed after round" in out
        summary = json.loads((tmp_path / "cloud" / "summary.json").read_text())
        resumed = summary["resumed_from"]
        assert resumed >= 3 and resumed >= max(first)
        # The right round and version: every round once, each one moved the model once.
        rows = d.rows()
        assert [r["round"] for r in rows] == list(range(1, 9))
        assert [r["version"] for r in rows] == list(range(1, 9))
        assert summary["version"] == 8 and summary["rounds"] == 8
        # Nothing lost, nothing twice: every edge counted exactly once in every round, the
        # re-issued one included (edges resend what the killed cloud may have taken in).
        for r in rows:
            assert r["participants"] == ["edge-0", "edge-1", "edge-2"], r
            assert r["counters"]["accepted"] >= 3
        assert summary["final_accuracy"] > 0.5
        for e in d.edges:
            assert e.finish(60) == 0
        # The edge(s) whose update the killed cloud had taken in sent it again, unchanged.
        assert any("round 4 re-issued; update resent" in "".join(e.seen) for e in d.edges)
    finally:
        d.kill_all()
