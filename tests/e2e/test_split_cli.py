"""`fedmq run --save-split / --split / --init-weights`: the same work again, from files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedmq.workloads import build_model, load_dataset

pytestmark = pytest.mark.e2e

BRIEF = ("--rounds", "2", "--local-epochs", "1", "--quiet")


def run(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedmq.cli.main", "run", *BRIEF, "--out", str(out), *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def summary(out: Path) -> dict[str, object]:
    return dict(json.loads((out / "summary.json").read_text()))


def curve(out: Path) -> list[tuple[float, float]]:
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    return [(r["accuracy"], r["loss"]) for r in rows]


def test_a_saved_split_and_the_initial_weights_reproduce_the_run(tmp_path: Path) -> None:
    first = run(tmp_path / "a", "--clients", "3", "--save-split", str(tmp_path / "split.json"))
    assert first.returncode == 0, first.stderr
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["edges"]) == 3 and len(split["test"]) == 359
    everything = sorted(i for part in [*split["edges"], split["test"]] for i in part)
    assert everything == list(range(1797))  # digits: every sample once
    # The seed-0 model's own weights, as another framework would hand them over.
    train, _ = load_dataset("digits")
    model = build_model("mlp", num_features=train.x.shape[1], num_classes=train.num_classes,
                        feature_shape=train.feature_shape, seed=0)  # fmt: skip
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    np.savez(tmp_path / "init.npz", **arrays)
    again = run(tmp_path / "b", "--split", str(tmp_path / "split.json"),
                "--init-weights", str(tmp_path / "init.npz"))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert summary(tmp_path / "b")["clients"] == 3  # from the split
    # The same work: every round's accuracy and loss to the last bit (bytes may differ by a
    # keepalive ping or two, which depend on timing).
    assert curve(tmp_path / "b") == curve(tmp_path / "a")
    # Other initial weights: the same split, another run.
    np.savez(tmp_path / "zero.npz", **{k: np.zeros_like(v) for k, v in arrays.items()})
    zero = run(tmp_path / "c", "--split", str(tmp_path / "split.json"),
               "--init-weights", str(tmp_path / "zero.npz"))  # fmt: skip
    assert zero.returncode == 0, zero.stderr
    assert curve(tmp_path / "c") != curve(tmp_path / "a")


def test_weights_that_do_not_fit_the_model_are_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", w=np.zeros(3, np.float32))
    proc = run(tmp_path / "x", "--init-weights", str(tmp_path / "bad.npz"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "init weights" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout.strip(), proc.stdout
    (tmp_path / "overlap.json").write_text(json.dumps({"edges": [[0, 1], [1, 2]], "test": [3]}))
    proc = run(tmp_path / "y", "--split", str(tmp_path / "overlap.json"))
    assert proc.returncode == 2 and "sample 1 is in both" in proc.stderr, proc.stderr
