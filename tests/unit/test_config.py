from pathlib import Path

import pytest

from fedmq.cli.config import RunConfig, resolve
from fedmq.errors import ConfigError

pytestmark = pytest.mark.unit


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text('[run]\nrounds = 7\nclients = 4\nmodel = "cnn"\n')
    cfg = resolve(f, {"clients": 3, "lr": None}, env={"FEDMQ_ROUNDS": "9", "FEDMQ_SEED": "5"})
    assert (cfg.rounds, cfg.clients, cfg.model, cfg.seed) == (9, 3, "cnn", 5)
    assert cfg.lr == RunConfig().lr


def test_flat_file_and_dashed_keys(tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text("local-epochs = 3\nmax_payload = 4096\n")
    cfg = resolve(f, env={})
    assert (cfg.local_epochs, cfg.max_payload) == (3, 4096)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("roundz = 3", "unknown setting"),
        ("rounds = 'many'", "expected int"),
        ("rounds = [", "bad.toml"),
    ],
)
def test_bad_files_are_config_errors(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve(f, env={})


def test_missing_file_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="not found"):
        resolve("/nonexistent/run.toml", env={})
    with pytest.raises(ConfigError):
        resolve(flags={"max_payload": 100}, env={})
    with pytest.raises(ConfigError):
        resolve(env={"FEDMQ_CLIENTS": "0"})
