"""Faults injected into real processes: an edge killed mid-run, the broker restarted mid-run."""

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.test_cli import ENV, FEDMQ, wait_port

pytestmark = pytest.mark.e2e


class Proc:
    """A fedmq process whose stdout lines we can wait for."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen(
            [*FEDMQ, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen; output: {''.join(self.seen)[-2000:]}")
            try:
                self.seen.append(self.lines.get(timeout=min(left, 1)))
            except queue.Empty:
                continue

    def finish(self, timeout: float = 180) -> int:
        code = self.p.wait(timeout)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)


def _cloud(url: str, out: Path, rounds: int) -> Proc:
    return Proc(
        "cloud",
        "--broker",
        url,
        "--clients",
        "3",
        "--rounds",
        str(rounds),
        "--local-epochs",
        "1",
        "--round-timeout",
        "8",
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
        "edge", "--broker", url, "--id", f"edge-{i}", "--job", "faults", "--profile", str(profile)
    )


@pytest.fixture
def slow(tmp_path: Path) -> Path:
    path = tmp_path / "slow.toml"
    path.write_text(SLOW)
    return path


class Deployment:
    """A broker, a cloud and three slow edges as separate processes; all killed at the end."""

    def __init__(self, tmp_path: Path, slow: Path, rounds: int) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.slow = slow
        self.broker = Proc("broker", "--allow-anonymous", "--port", str(self.port))
        self.procs = [self.broker]
        wait_port(self.port, self.broker.p)
        self.cloud = _cloud(self.url, tmp_path / "cloud", rounds=rounds)
        self.edges = [_edge(self.url, i, slow) for i in range(3)]
        self.procs += [self.cloud, *self.edges]

    def start(self, *args: str) -> Proc:
        proc = Proc(*args)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for p in self.procs:
            p.kill()


def test_an_edge_killed_mid_run_is_survived_and_catches_up(tmp_path: Path, slow: Path) -> None:
    d = Deployment(tmp_path, slow, rounds=12)
    try:
        d.cloud.wait_for("round 2/12")
        d.edges[2].kill()  # no goodbye: the broker publishes its last will
        d.cloud.wait_for("round 4/12")
        late = _edge(d.url, 2, slow)  # the same edge comes back
        d.procs.append(late)
        assert d.cloud.finish() == 0, "".join(d.cloud.seen)[-2000:]
        assert late.finish(60) == 0
        rows = [
            json.loads(x) for x in (tmp_path / "cloud" / "rounds.jsonl").read_text().splitlines()
        ]
        assert len(rows) == 12 and all(r["quorum_met"] for r in rows)
        without = [r for r in rows if "edge-2" not in r["participants"]]
        assert without, "no round ran without the killed edge"
        back = [r for r in rows if r["round"] > 4 and "edge-2" in r["participants"]]
        assert back, "the restarted edge never delivered an update"
        # It trained from the current model: the cloud accepted its update for that version.
        assert "trained" in "".join(late.seen)
    finally:
        d.kill_all()


def test_the_broker_restarted_mid_run_is_survived(tmp_path: Path, slow: Path) -> None:
    d = Deployment(tmp_path, slow, rounds=6)
    try:
        d.cloud.wait_for("round 2/6")
        d.broker.kill()  # every retained message and session is gone with it
        time.sleep(1.0)
        broker = d.start("broker", "--allow-anonymous", "--port", str(d.port))
        wait_port(d.port, broker.p)
        assert d.cloud.finish() == 0, "".join(d.cloud.seen)[-2000:]
        for e in d.edges:
            assert e.finish(60) == 0
        summary = json.loads((tmp_path / "cloud" / "summary.json").read_text())
        assert summary["rounds"] == 6 and summary["final_accuracy"] > 0.5
    finally:
        d.kill_all()
