"""The CLI as a user runs it: separate processes, real brokers on loopback ports."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e

FEDMQ = [sys.executable, "-m", "fedmq.cli.main"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def fedmq(
    *args: str, timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDMQ, *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd
    )


def wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on {port}") from None
            time.sleep(0.1)


def test_default_run_meets_the_bar_and_reproduces(tmp_path: Path) -> None:
    """`fedmq run` with defaults: >= 0.94 accuracy in <= 60 s, and the same again with the seed."""
    accuracies = []
    for name in ("a", "b"):
        started = time.monotonic()
        proc = fedmq("run", "--out", str(tmp_path / name))
        process_seconds = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        for key in ("final_accuracy", "rounds", "wall_seconds", "bytes_up", "bytes_down",
                    "clients", "codec", "broker"):  # fmt: skip
            assert key in summary
        assert summary["final_accuracy"] >= 0.94
        assert summary["wall_seconds"] <= 60 and process_seconds <= 90
        assert summary["clients"] == 10 and summary["broker"] == "embedded amqtt"
        assert "round 30/30" in proc.stdout and "final accuracy" in proc.stdout
        rows = (tmp_path / name / "rounds.jsonl").read_text().splitlines()
        assert len(rows) == summary["rounds"]
        # The rounds add up to the total but for the goodbye and DISCONNECT after the last one.
        teardown = summary["bytes_up"] - sum(json.loads(r)["bytes_up"] for r in rows)
        assert 0 <= teardown <= 10 * 200
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["run"]["seed"] == 0
        assert (tmp_path / name / "model.pt").stat().st_size > 30_000
        accuracies.append(summary["final_accuracy"])
    assert accuracies[0] == accuracies[1]


def _deployment(
    broker_url: str, port: int, tmp_path: Path, broker_proc: subprocess.Popen[str] | None
) -> None:
    cloud = subprocess.Popen(
        [*FEDMQ, "cloud", "--broker", broker_url, "--clients", "3", "--rounds", "3",
         "--job", "deploy", "--round-timeout", "30", "--out", str(tmp_path / "cloud")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    edges = [
        subprocess.Popen(
            [*FEDMQ, "edge", "--broker", broker_url, "--id", f"edge-{i}", "--job", "deploy"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for i in range(3)
    ]
    try:
        out, err = cloud.communicate(timeout=180)
        assert cloud.returncode == 0, err
        assert "round 3/3" in out
        for edge in edges:
            edge_out, edge_err = edge.communicate(timeout=30)
            assert edge.returncode == 0, edge_err
            assert "trained 3 rounds" in edge_out
        summary = json.loads((tmp_path / "cloud" / "summary.json").read_text())
        assert summary["rounds"] == 3 and summary["final_accuracy"] > 0.6
    finally:
        for p in [cloud, *edges]:
            if p.poll() is None:
                p.kill()


def test_separate_processes_on_the_embedded_broker(tmp_path: Path) -> None:
    port = free_port()
    broker = subprocess.Popen([*FEDMQ, "broker", "--allow-anonymous",
                               "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    try:
        wait_port(port, broker)
        _deployment(f"mqtt://127.0.0.1:{port}", port, tmp_path, broker)
        # a second broker on the same port fails with a clear message
        clash = fedmq("broker", "--allow-anonymous", "--port", str(port), timeout=30)
        assert clash.returncode == 2
        assert "cannot listen" in clash.stderr and "another broker" in clash.stderr
    finally:
        broker.terminate()
        broker.wait(10)


def test_separate_processes_on_mosquitto(mosquitto_url: str, tmp_path: Path) -> None:
    port = int(mosquitto_url.rsplit(":", 1)[1])
    _deployment(mosquitto_url, port, tmp_path, None)


def test_centralized_prints_beside_federated(tmp_path: Path) -> None:
    proc = fedmq("centralized", "--rounds", "3", "--clients", "4", "--out", str(tmp_path / "f"))
    assert proc.returncode == 0, proc.stderr
    assert "centralized:" in proc.stdout and "federated:" in proc.stdout and "gap" in proc.stdout


def test_help_and_bad_input() -> None:
    proc = fedmq("run", "--help")
    assert proc.returncode == 0 and "--max-payload" in proc.stdout and "dirichlet" in proc.stdout
    bad = fedmq("run", "--codec", "gzip9", "--rounds", "1")
    assert bad.returncode == 2 and "error" in bad.stderr and "Traceback" not in bad.stderr
    bad = fedmq("run", "--max-payload", "100")
    assert bad.returncode == 2 and "max_payload" in bad.stderr
    codecs = fedmq("codecs")
    assert codecs.returncode == 0 and "int8" in codecs.stdout


def test_compose_file_is_valid() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is not installed (scripts/test.sh installs it)")
    root = Path(__file__).parents[2]
    proc = subprocess.run([tool, "-f", str(root / "docker-compose.yml"), "config", "-q"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_profiles_estimate_and_report(tmp_path: Path) -> None:
    listing = fedmq("profiles")
    assert (
        listing.returncode == 0 and "nbiot-modem" in listing.stdout and "264 b/s" in listing.stdout
    )
    shown = fedmq("profiles", "show", "nbiot-modem")
    assert shown.returncode == 0 and "Electronics 10:2224" in shown.stdout
    est = fedmq("estimate", "--fleet", "esp32s3-wifi:2,ltem-modem:1", "--rounds", "4", "--json")
    assert est.returncode == 0, est.stderr
    data = json.loads(est.stdout)
    for key in ("estimated_bytes_up", "estimated_bytes_down", "naive_bytes",
                "round_bound_seconds"):  # fmt: skip
        assert key in data
    assert len(data["round_bound_seconds"]) == 4 and data["clients"] == 3
    assert data["naive_bytes"] == 4 * 3 * 4 * 9610  # W x C x R, fp32
    human = fedmq("estimate", "--rounds", "4")
    assert human.returncode == 0 and "naive" in human.stdout
    run = fedmq("run", "--fleet", "esp32s3-wifi:2,pi4-ethernet:1", "--rounds", "2",
                "--out", str(tmp_path / "r"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "fedmq estimate" in run.stdout and "link-limited bound" in run.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(summary["round_seconds"]) == len(summary["round_bound_seconds"]) == 2
    for png in ("bytes.png", "round_time.png"):
        (tmp_path / "r" / png).unlink()
    report = fedmq("report", str(tmp_path / "r"))
    assert report.returncode == 0 and (tmp_path / "r" / "bytes.png").exists()
    assert (tmp_path / "r" / "round_time.png").stat().st_size > 10_000


def test_a_model_too_big_for_a_device_is_refused() -> None:
    proc = fedmq("estimate", "--fleet", "nano33ble-ble:2", "--model", "cnn")
    assert proc.returncode == 2
    assert "nano33ble-ble" in proc.stderr and "38,282 parameters" in proc.stderr
    assert "256 KiB" in proc.stderr
    lora = fedmq("estimate", "--fleet", "lorawan-sf7:1")
    assert lora.returncode == 2 and "222 B" in lora.stderr


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("async", ("--buffer-size", "2", "--staleness", "hinge:1:2")),
        ("chain", ()),
        ("sync", ("--server-opt", "fedadam", "--prox-mu", "0.01", "--drift", "grow:0.5",
                  "--head-only", "1")),
    ],
)  # fmt: skip
def test_run_in_every_mode(tmp_path: Path, mode: str, extra: tuple[str, ...]) -> None:
    out = tmp_path / mode
    r = fedmq("run", "--quiet", "--mode", mode, "--clients", "3", "--rounds", "3",
              "--local-epochs", "1", "--out", str(out), *extra)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == mode and summary["rounds"] == 3
    assert (out / "accuracy.png").stat().st_size > 0
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    times = [r["training_elapsed"] for r in rows]
    assert times == sorted(times) and times[0] > 0  # accuracy over time, not only at the end
    if mode == "sync":
        _assert_each_sync_option_took_effect(out, summary, rows, extra)


def _assert_each_sync_option_took_effect(
    out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], extra: tuple[str, ...]
) -> None:
    """config.json and summary.json only echo the flags, so look at what each one changed."""
    # --head-only 1: the last edge trains and sends only the classifier head (650 of 9,610
    # parameters of the MLP), a fraction of what the full edges send
    edges = summary["edges"]
    assert [e["train"] for e in edges] == ["all", "all", "head"]
    assert edges[2]["updates"] == 3
    assert edges[2]["bytes_up"] < 0.3 * min(e["bytes_up"] for e in edges[:2])
    # --drift grow:0.5: every edge's data grows between rounds, so each round weighs more samples
    samples = [r["num_samples"] for r in rows]
    assert samples[0] < samples[1] < samples[2], samples

    # --server-opt and --prox-mu: the same command for one round (drift depends on the number of
    # rounds), then again with each option left out in turn. The run is deterministic, so round 1
    # must match bit for bit where the option left out cannot act: the server optimizer moves
    # only the aggregate, prox_mu only the edges' local steps.
    def round_one(name: str, *drop: str) -> dict[str, Any]:
        args = list(extra)
        for flag in drop:
            del args[args.index(flag) : args.index(flag) + 2]
        r = fedmq("run", "--quiet", "--clients", "3", "--rounds", "1", "--local-epochs", "1",
                  "--out", str(out.parent / name), *args)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        row: dict[str, Any] = json.loads((out.parent / name / "rounds.jsonl").read_text())
        return row

    def trained(row: dict[str, Any]) -> dict[str, tuple[float, float]]:
        return {e: (m["loss"], m["accuracy"]) for e, m in row["client_metrics"].items()}

    both = round_one("both")
    no_opt, no_prox = round_one("no-opt", "--server-opt"), round_one("no-prox", "--prox-mu")
    assert trained(both) == trained(no_opt)  # control: edges trained the same without fedadam
    assert both["loss"] != no_opt["loss"]  # fedadam moved the model unlike plain FedAvg
    changed = [e for e in sorted(trained(both)) if trained(both)[e][0] != trained(no_prox)[e][0]]
    assert changed == ["edge-0", "edge-1", "edge-2"]  # prox_mu reached every edge's local loss


def test_keys_makes_an_enrollable_pair(tmp_path: Path) -> None:
    r = fedmq("keys", str(tmp_path), "--device", "edge-0", "--device", "edge-1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "edge-0.key", "edge-0.pub", "edge-1.key", "edge-1.pub",
    ]  # fmt: skip
    again = fedmq("keys", str(tmp_path), "--device", "edge-0")
    assert again.returncode == 2 and "--force" in again.stderr
