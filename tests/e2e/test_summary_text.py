"""What `fedmq run` tells a user it sent, and what it compares round times with, as printed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def run(out: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "fedmq.cli.main", "run", "--clients", "3", "--rounds", "2",
         "--local-epochs", "1", "--out", str(out), *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_a_chain_run_says_it_sent_the_full_model_every_hop(tmp_path: Path) -> None:
    stdout = run(tmp_path / "chain", "--mode", "chain")
    summary = json.loads((tmp_path / "chain" / "summary.json").read_text())
    assert summary["mode"] == "chain"
    sent = [line for line in stdout.splitlines() if line.strip().startswith("sent ")]
    assert len(sent) == 2, stdout
    assert all("full model in fp32+zstd, every hop" in line for line in sent)
    assert "delta" not in stdout
    # summary.json says the same, and names no delta codec chain never used
    assert "every hop" in summary["sent_up"] and "every hop" in summary["sent_down"]
    assert "delta_codec" not in summary
    # Each of the 3 edges receives and passes on one ~31 KiB model per pass.
    assert summary["bytes_up"] >= 2 * 3 * 28 * 1024


def test_a_loopback_run_holds_round_times_to_no_bound(tmp_path: Path) -> None:
    stdout = run(tmp_path / "bare")
    assert "link-limited bound: median" not in stdout
    assert "round time: median" in stdout and "(no link emulation" in stdout
    assert "every round's change in int8+zstd" in stdout and " MB" not in stdout
    summary = json.loads((tmp_path / "bare" / "summary.json").read_text())
    assert "every round's change in int8+zstd" in summary["sent_down"]
