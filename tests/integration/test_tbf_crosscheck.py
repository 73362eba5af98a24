"""The userspace link shaper against the kernel's tbf qdisc (short `bench/tbf_crosscheck.py`).

The round-time bound and the userspace shaper use the same formula (bytes x 8 / rate), so
shaped runs meeting their bound cannot show that the shaper is right. Here an independent
shaper, the kernel's token bucket on the loopback of a network namespace of our own, moves the
same MQTT publishes (QoS 1, to the last PUBACK) at the same rate.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 0.15  # userspace time within 15% of tbf's (measured 0.93-0.94: tbf also meters
# the TCP/IP headers and the ACKs coming back, which the userspace shaper does not)


def _why_not() -> str:
    if os.geteuid() != 0:
        return "needs root to create a network namespace and a tc qdisc (CI runs as root)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (iproute2) for the kernel tbf shaper"
    return ""


@pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "runs")
def test_userspace_shaper_matches_kernel_tbf(tmp_path: Path) -> None:
    ns = f"fedmq-tbftest-{os.getpid()}"
    out = tmp_path / "tbf.json"
    argv = [sys.executable, str(ROOT / "bench" / "tbf_crosscheck.py"), "--rates", "1000000",
            "--seconds", "1", "--rounds", "1", "--reps", "3", "--no-floor",
            "--netns", ns, "--json", str(out)]  # fmt: skip
    # Its own process group: on a timeout the script and the brokers it started go together.
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    finally:  # the script deletes it itself; this covers a script that did not get to
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns not in listed
    (row,) = json.loads(out.read_text())["rates"]
    # The kernel really shaped: 1 Mbit/s for ~116 KB takes ~0.93 s, not the ms of loopback.
    assert row["kernel_tbf_s"] > 0.8 * row["estimate_s"]
    assert row["userspace_s"] == pytest.approx(row["kernel_tbf_s"], rel=TOLERANCE), row
