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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"fraction": 2.0}, "--fraction must be in (0, 1], got 2"),
        ({"fraction": 0.0}, "--fraction must be in (0, 1], got 0"),
        ({"fraction": -0.5}, "--fraction must be in (0, 1], got -0.5"),
        ({"min_fit": 0}, "--min-fit must be at least 1, got 0"),
        ({"min_fit": 50, "clients": 10}, "--min-fit must be at most --clients (10), got 50"),
        ({"seed": -1}, "--seed must be >= 0, got -1"),
        ({"strategy": "mean"}, "--strategy 'mean': choose from"),
        ({"server_opt": "adam"}, "--server-opt 'adam': choose from"),
        ({"lr": float("nan")}, "--lr must be > 0"),
        ({"test_fraction": 1.0}, "--test-fraction must be in (0, 1)"),
    ],
)
def test_ranges_are_refused_in_the_flags_words(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(flags=flags, env={})
    assert str(info.value).startswith(message)


def test_names_checked_here_are_the_ones_planning_builds() -> None:
    from fedmq.cli import config, planning

    assert config.STRATEGIES == planning.STRATEGIES
    assert config.SERVER_OPTS == planning.SERVER_OPTS


SPECS = {
    "partition": ["iid", "dirichlet", "dirichlet:0.1", "shards", "shards:3", "IID", "iid:1",
                  "dirichlet:0", "dirichlet:-1", "dirichlet:x", "dirichlet:", "shards:0",
                  "shards:1.5", "shards:x", "nope", "", "dirichlet:nan"],
    "staleness": ["constant", "poly", "poly:0.5", "hinge:1:2", "exp:0.5", "hinge", "poly:-1",
                  "hinge:1", "exp:x", "constant:1", "nope", "", "poly:1:2"],
    "drift": ["none", "grow", "grow:0.3", "grow:1", "labels", "labels:0.9", "labels:0.5:3",
              "grow:0", "grow:2", "labels:1", "labels:0.5:0", "labels:0.5:x", "none:1", "x"],
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_spec_checks_agree_with_the_parsers(kind: str) -> None:
    """cli.checks refuses a spec exactly when the runtime's parser does (that one needs torch)."""
    from fedmq.cli import checks
    from fedmq.cloud_node.staleness import Staleness
    from fedmq.workloads import PartitionSpec
    from fedmq.workloads.drift import DriftSpec

    parsers = {"partition": PartitionSpec.parse, "staleness": Staleness.parse,
               "drift": DriftSpec.parse}  # fmt: skip
    for spec in SPECS[kind]:
        try:
            parsers[kind](spec)
            parsed = True
        except ConfigError:
            parsed = False
        try:
            getattr(checks, kind)(spec)
            checked = True
        except ConfigError:
            checked = False
        assert checked == parsed, (kind, spec, parsed)


def test_misspelled_variables_are_named_with_the_closest_setting() -> None:
    from fedmq.cli.config import unknown_env

    warnings = unknown_env(
        {"FEDMQ_ROUNDZ": "5", "FEDMQ_PASSWORD": "x", "FEDMQ_ROUNDS": "3", "FEDMQ_QQQQQQQ": "1",
         "HOME": "/root"}
    )  # fmt: skip
    assert warnings == [
        "FEDMQ_QQQQQQQ is not a fedmq setting; ignored",
        "FEDMQ_ROUNDZ is not a fedmq setting; ignored (did you mean FEDMQ_ROUNDS?)",
    ]


def test_writable_dir_refuses_files_proc_and_what_lies_under_a_file(tmp_path: Path) -> None:
    from fedmq.cli.checks import writable_dir, writable_file

    (tmp_path / "f").write_text("x")
    writable_dir("--out", tmp_path / "new" / "deeper")  # made later, by the run
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == [tmp_path / "f"]
    for bad, match in ((tmp_path / "f", "is a file"), (tmp_path / "f" / "x", "is a file"),
                       ("/proc/fedmq-x", "cannot write")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            writable_dir("--out", bad)
    with pytest.raises(ConfigError, match="is a folder"):
        writable_file("--checkpoint", str(tmp_path))


def test_a_bad_value_from_the_environment_or_a_file_says_where_it_was_set(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"^--seed must be >= 0, got -1 \(set by FEDMQ_SEED\)$"):
        resolve(env={"FEDMQ_SEED": "-1"})
    f = tmp_path / "run.toml"
    f.write_text("fraction = 2\n")
    with pytest.raises(ConfigError, match=rf"got 2 \(set by {f}\)$"):
        resolve(f, env={})
    with pytest.raises(ConfigError, match=r"got 2$"):  # a flag: the user just typed it
        resolve(f, {"fraction": 2.0}, env={})
