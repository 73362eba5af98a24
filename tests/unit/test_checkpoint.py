"""Cloud checkpoints: exact round trip, atomic replacement, clear errors for bad files."""

from pathlib import Path

import numpy as np
import pytest

from fedmq.cloud_node import checkpoint
from fedmq.cloud_node.fedadam import FedAdam
from fedmq.errors import ConfigError

pytestmark = pytest.mark.unit


def _ckpt(round: int = 4) -> checkpoint.Checkpoint:
    rng = np.random.default_rng(round)
    return checkpoint.Checkpoint(
        round=round, version=round - 1, attempt=2,
        flat=rng.normal(size=1000).astype(np.float32),
        view=rng.normal(size=1000).astype(np.float32),
        pending_delta=(b"\x00\x01", b"", b"abc" * 100),
        meta={"rng": np.random.default_rng(7).bit_generator.state, "records": [{"round": 1}]},
        optimizer={"m": rng.normal(size=1000), "t": np.array(3)},
    )  # fmt: skip


def test_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "cloud.ckpt.npz"
    saved = _ckpt()
    checkpoint.save(path, saved)
    back = checkpoint.load(path)
    assert (back.round, back.version, back.attempt) == (4, 3, 2)
    np.testing.assert_array_equal(back.flat, saved.flat)
    np.testing.assert_array_equal(back.view, saved.view)
    assert back.pending_delta == saved.pending_delta
    assert back.meta == saved.meta
    np.testing.assert_array_equal(back.optimizer["m"], saved.optimizer["m"])
    rng = np.random.default_rng()
    rng.bit_generator.state = back.meta["rng"]
    assert rng.integers(1 << 30) == np.random.default_rng(7).integers(1 << 30)


def test_a_new_checkpoint_replaces_the_old_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    checkpoint.save(path, _ckpt(4))
    checkpoint.save(path, _ckpt(5))
    assert checkpoint.load(path).round == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


def test_optimizer_state_resumes_the_same_trajectory(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=64).astype(np.float32)
    deltas = [rng.normal(size=64).astype(np.float32) for _ in range(4)]
    straight = FedAdam()
    y = x
    for d in deltas:
        y = straight.step(y, d)
    first = FedAdam()
    z = first.step(first.step(x, deltas[0]), deltas[1])
    checkpoint.save(tmp_path / "o.npz", _ckpt_with(first.state()))
    second = FedAdam()
    second.load_state(checkpoint.load(tmp_path / "o.npz").optimizer)
    z = second.step(second.step(z, deltas[2]), deltas[3])
    np.testing.assert_array_equal(y, z)


def _ckpt_with(state: dict[str, np.ndarray]) -> checkpoint.Checkpoint:
    c = _ckpt()
    return checkpoint.Checkpoint(c.round, c.version, c.attempt, c.flat, c.view, (), {}, state)


def test_garbage_and_truncated_files_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="unreadable"):
        checkpoint.load(bad)
    good = tmp_path / "good.npz"
    checkpoint.save(good, _ckpt())
    bad.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ConfigError):
        checkpoint.load(bad)
