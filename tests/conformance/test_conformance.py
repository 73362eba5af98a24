"""Conformance: a captured run decoded with only `reference_decoder` (written from
docs/protocol.md, importing nothing from fedmq) reproduces the run's final model bit for bit
and its reported accuracy to the last digit."""

import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from tests.conformance import reference_decoder as ref
from tests.conftest import free_port
from tests.e2e.test_cli import ENV, wait_port

pytestmark = pytest.mark.integration

JOB = "conform"


def _test_set(seed: int, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """The cloud's held-out set as protocol.md §12 defines it."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[: round(len(idx) * test_fraction)])
    sel = np.sort(np.concatenate(test))
    return x[sel], y[sel]


def _accuracy(tensors: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """protocol.md §12: logits = relu(x W1^T + b1) W2^T + b2, in float32."""
    h = np.maximum(x @ tensors["fc1.weight"].T + tensors["fc1.bias"], np.float32(0))
    logits = h @ tensors["fc2.weight"].T + tensors["fc2.bias"]
    return int((logits.argmax(1) == y).sum()) / len(y)


def test_captured_run_reproduces_model_and_accuracy(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    port = free_port()
    broker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedmq.cli.main",
            "broker",
            "--allow-anonymous",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    captured: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            captured.append((msg.topic, bytes(msg.payload)))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="conformance-capture")
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    try:
        wait_port(port, broker)
        client.connect("127.0.0.1", port)
        client.subscribe(f"fedmq/{JOB}/#", qos=1)
        client.loop_start()
        assert subscribed.wait(10)
        out = tmp_path / "run"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedmq.cli.main",
                "run",
                "--clients",
                "3",
                "--rounds",
                "3",
                "--local-epochs",
                "1",
                "--job",
                JOB,
                "--out",
                str(out),
                "--broker",
                f"mqtt://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    finally:
        client.loop_stop()
        client.disconnect()
        broker.terminate()
        broker.wait(10)

    # Decode with the reference decoder only.
    job: dict[str, Any] | None = None
    summaries: list[dict[str, Any]] = []
    models: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    updates: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for topic, payload in captured:
        if not payload:
            continue  # a cleared retained message
        msg = ref.decode(payload)
        if msg["kind"] == "job":
            job = msg
        elif msg["kind"] == "summary":
            summaries.append(msg)
        elif msg["kind"] == "chunk" and msg["role"] == "model":
            models[(msg["round"], msg["version"])].append(msg)
        elif msg["kind"] == "chunk" and msg["role"] == "update":
            assert topic == f"fedmq/{JOB}/update/{msg['sender']}"
            updates[msg["round"]].append(msg)
    assert job is not None and len(summaries) == 3

    # Version 0: the full model of round 1, lossless (fp32+zstd).
    _, flat, _ = ref.assemble(models[(1, 0)])
    # Each round: model_v + sum(w_i * delta_i) / sum(w_i) per 64-element block (§11.1 step 5),
    # summed in float64 in arrival order, rounded once to float32.
    for summary in summaries:
        by_sender: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for c in updates[summary["round"]]:
            by_sender[c["sender"]].append(c)
        total = np.zeros(flat.size, np.float64)
        weight = np.zeros(flat.size, np.float64)
        for chunks in by_sender.values():
            _, delta, covered = ref.assemble(chunks)
            w = float(chunks[0]["num_samples"])
            total += w * delta.astype(np.float64)
            weight += w * covered
        assert sum(c[0]["num_samples"] for c in by_sender.values()) == summary["num_samples"]
        mean = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
        flat = (flat.astype(np.float64) + mean).astype(np.float32)

    saved = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    tensors = ref.unflatten(flat, job["layout"])
    assert list(saved) == list(tensors)
    for name, value in tensors.items():
        expected = saved[name].numpy()
        assert expected.dtype == np.float32 and expected.shape == value.shape
        assert expected.tobytes() == value.tobytes(), name

    x, y = _test_set(job["seed"])
    assert _accuracy(tensors, x, y) == summaries[-1]["accuracy"]
