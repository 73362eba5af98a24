"""`fedmq report` on the directory of a run stopped part-way: the rounds it finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

FEDMQ = [sys.executable, "-m", "fedmq.cli.main"]


def test_a_run_stopped_after_three_rounds_reports_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    out = tmp_path / "run"
    run = subprocess.Popen(
        [*FEDMQ, "run", "--rounds", "200", "--clients", "3", "--local-epochs", "1",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert run.stdout is not None
        for line in run.stdout:
            if line.split()[:2] == ["round", "3/200"]:  # "round   3/200": aligned numbers
                break
        run.send_signal(signal.SIGKILL)  # a crash, a power cut: nothing gets to clean up
        run.wait(60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    assert run.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    report = subprocess.run([*FEDMQ, "report", str(out)], capture_output=True, text=True,
                            timeout=60, env=env)  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "interrupted run (no summary.json)" in report.stdout
    listed = [line for line in report.stdout.splitlines() if line.startswith("  round ")]
    assert len(listed) >= 3 and listed[0].startswith("  round 1  acc ")
    assert report.stderr == ""
