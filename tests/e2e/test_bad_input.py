"""Every command answers bad input with exit code 2 and one line on stderr, never a traceback.

In-process (`fedmq.cli.main.main`), so the whole table takes seconds: each row must be refused
before anything starts, and an alarm stops a row that starts something anyway.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from types import FrameType

import pytest

from fedmq.cli.main import CLOUD_SKIP, build_parser, main
from fedmq.cli.options import CENTRALIZED_ONLY
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

REFUSED = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
QUICK = ("--connect-timeout", "0.3")

# (command, bad arguments); {tmp} is a fresh folder, {file} a regular file in it, {ro} a
# read-only folder, {missing} a path that does not exist.
ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("run", ("--fraction", "2")),
    ("run", ("--fraction", "0")),
    ("run", ("--fraction", "-0.5")),
    ("run", ("--min-fit", "0")),
    ("run", ("--min-fit", "50", "--clients", "10")),
    ("run", ("--min-fit", "5", "--fleet", "pi4-ethernet:2")),
    ("run", ("--seed", "-1")),
    ("run", ("--rounds", "0")),
    ("run", ("--rounds", "many")),
    ("run", ("--lr", "nan")),
    ("run", ("--momentum", "1")),
    ("run", ("--quorum", "0")),
    ("run", ("--test-fraction", "1")),
    ("run", ("--out", "{ro}/run")),
    ("run", ("--split", "{missing}")),
    ("run", ("--split", "{file}", "--fleet", "pi4-ethernet:2")),
    ("run", ("--init-weights", "{missing}")),
    ("run", ("--save-split", "{file}/split.json")),
    ("run", ("--out", "{file}/run")),
    ("run", ("--out", "{file}")),
    ("run", ("--out", "/proc/fedmq-run")),
    ("run", ("--codec", "gzip9")),
    ("run", ("--delta-codec", "int9")),
    ("run", ("--downlink-codec", "topk:0.1+int8")),  # the full model must be dense
    ("run", ("--partition", "dirichlet:0")),
    ("run", ("--partition", "shards:x")),
    ("run", ("--fleet", "no-such-board:3")),
    ("run", ("--fleet", "pi4-ethernet:0")),
    ("run", ("--staleness", "poly:-1")),
    ("run", ("--drift", "grow:2")),
    ("run", ("--strategy", "mean")),
    ("run", ("--server-opt", "adam")),
    ("run", ("--mode", "sideways")),
    ("run", ("--job", "a/b")),
    ("run", ("--broker", "ftp://127.0.0.1:21")),
    ("run", ("--broker", "{refused}", *QUICK)),
    ("run", ("--config", "{missing}")),
    # Refused by the data and fleet checks (torch loaded), still before the banner.
    ("run", ("--model", "transformer")),
    ("run", ("--dataset", "imagenet")),
    ("run", ("--fleet", "lorawan-sf7:1")),  # 222 B messages: below one fedmq chunk
    ("run", ("--fleet", "nano33ble-ble:2", "--model", "cnn")),  # 256 KiB of RAM
    ("run", ("--no-such-flag",)),
    ("broker", ()),  # neither --password-file nor --allow-anonymous
    ("broker", ("--allow-anonymous", "--port", "70000")),
    ("broker", ("--allow-anonymous", "--port", "-1")),
    ("broker", ("--allow-anonymous", "--max-packet", "0")),
    ("broker", ("--allow-anonymous", "--host", "no such host")),
    ("broker", ("--password-file", "/dev/null")),
    ("broker", ("--password-file", "{missing}")),
    ("broker", ("--allow-anonymous", "--tls-key", "{file}")),
    ("cloud", ()),  # no --broker
    ("cloud", ("--broker", "{refused}", *QUICK)),
    ("cloud", ("--broker", "{refused}", "--fraction", "2")),
    ("cloud", ("--broker", "{refused}", "--resume")),
    ("cloud", ("--broker", "{refused}", "--min-clients", "-1")),
    ("cloud", ("--broker", "{refused}", "--trusted-keys", "{missing}")),
    ("cloud", ("--broker", "{refused}", "--checkpoint", "{file}/ck")),
    ("cloud", ("--broker", "{refused}", "--tls-ca", "{missing}")),
    ("cloud", ("--broker", "{refused}", "--connect-timeout", "0")),
    # Issue 20: run flags the cloud never reads are not accepted.
    ("cloud", ("--broker", "{refused}", "--fleet", "pi4-ethernet:2")),
    ("cloud", ("--broker", "{refused}", "--head-only", "1")),
    ("cloud", ("--broker", "{refused}", "--threads", "2")),
    ("cloud", ("--broker", "{refused}", "--sample-rounds", "2")),
    ("edge", ("--id", "edge-0")),  # no --broker
    ("edge", ("--broker", "{refused}", "--id", "a/b")),
    ("edge", ("--broker", "{refused}", "--id", "edge-0", "--shard", "-1")),
    ("edge", ("--broker", "{refused}", "--id", "edge-0", "--threads", "0")),
    ("edge", ("--broker", "{refused}", "--id", "edge-0", "--profile", "no-such-board")),
    ("edge", ("--broker", "{refused}", "--id", "edge-0", "--codec", "gzip9")),
    ("edge", ("--broker", "{refused}", "--id", "edge-0", "--sign-key", "{missing}")),
    ("edge", ("--broker", "{refused}", "--id", "edge-0", "--train", "half")),
    ("edge", ("--broker", "mqtt://", "--id", "edge-0")),
    ("edge", ("--broker", "{refused}", "--id", "edge-0", *QUICK)),
    ("serve", ("--broker", "{refused}", "--http", "nowhere")),
    ("serve", ("--broker", "{refused}", "--max-rows", "0")),
    ("serve", ("--broker", "{refused}", "--id", "a b")),
    ("serve", ("--broker", "{refused}", *QUICK)),
    ("centralized", ("--fraction", "2")),
    ("centralized", ("--no-federated", "--codec", "fp16")),
    ("centralized", ("--no-federated", "--strategy", "median")),
    ("centralized", ("--no-federated", "--mode", "async")),
    ("centralized", ("--federated", "{tmp}")),  # no summary.json there
    ("centralized", ("--federated", "{tmp}", "--no-federated")),
    ("profiles", ("show",)),
    ("profiles", ("show", "no-such-board")),
    ("profiles", ("sideways",)),
    ("estimate", ("--fraction", "2")),
    ("estimate", ("--out", "{tmp}/x")),  # an estimate writes no run directory
    ("estimate", ("--broker", "mqtt://127.0.0.1:1")),  # and talks to no broker
    ("estimate", ("--min-fit", "50")),
    ("estimate", ("--partition", "dirichlet:-1")),
    ("report", ("{missing}",)),
    ("report", ("{tmp}",)),  # no rounds.jsonl
    ("report", ("{empty_run}",)),  # interrupted before its first round
    ("report", ("{garbled_run}",)),  # a line in the middle is not JSON
    ("report", ("{started_run}",)),  # killed before round 1: config.json, no rounds.jsonl
    ("report", ()),
    ("keys", ("{tmp}/keys",)),  # no --device
    ("keys", ("{tmp}/keys", "--device", "a/b")),
    ("keys", ("{file}", "--device", "edge-0")),
    ("passwd", ("{tmp}/passwd", "a b", "--password-stdin")),
    ("passwd", ("{file}/passwd", "edge-0", "--password-stdin")),
    ("passwd", ("{tmp}/passwd", "edge-0", "--iterations", "0", "--password-stdin")),
    ("acl", ("--cloud-user", "a/b")),
    ("acl", ("extra",)),
    ("certs", ("{tmp}/pki", "--days", "0")),
    ("certs", ("{file}", "--device", "edge-0")),
    ("certs", ("{tmp}/pki", "--device", "a b")),
    ("certs", ("{tmp}/pki", "--host", "")),
    ("codecs", ("--verbose",)),
    ("codecs", ("extra",)),
    ("broker-config", ("--allow-anonymous",)),  # no --port
    ("broker-config", ("--port", "0", "--allow-anonymous")),
    ("broker-config", ("--port", "70000", "--allow-anonymous")),
    ("broker-config", ("--port", "1883")),  # neither --password-file nor --allow-anonymous
    ("broker-config", ("--port", "1883", "--password-file", "{missing}")),
    ("broker-config", ("--port", "1883", "--allow-anonymous", "--tls-cert", "{file}")),
    ("broker-config", ("--port", "1883", "--allow-anonymous", "--out", "{file}/conf")),
]
COMMANDS = {"run", "broker", "cloud", "edge", "serve", "centralized", "profiles", "estimate",
            "report", "keys", "passwd", "acl", "certs", "codecs", "broker-config"}  # fmt: skip


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "file").write_text("not a folder\n")
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes into a 0o555 folder; nobody writes into sysfs
        ro = Path("/sys/kernel")
    empty = tmp / "empty_run"
    empty.mkdir()
    (empty / "rounds.jsonl").write_text("")
    started = tmp / "started_run"
    started.mkdir()
    (started / "config.json").write_text("{}\n")
    garbled = tmp / "garbled_run"
    garbled.mkdir()
    (garbled / "rounds.jsonl").write_text('{"round": 1}\nnot json\n{"round": 3}\n')
    return {"tmp": str(tmp), "file": str(tmp / "file"), "ro": str(ro),
            "missing": str(tmp / "missing"), "empty_run": str(empty),
            "garbled_run": str(garbled), "started_run": str(started),
            "refused": REFUSED}  # fmt: skip


@pytest.fixture
def alarm() -> Iterator[None]:
    """A row that starts a run or a broker instead of refusing fails here, not hangs."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("the command started instead of refusing its input")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_table_covers_every_command() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == COMMANDS  # type: ignore[arg-type]
    assert {command for command, _ in ROWS} == COMMANDS


@pytest.mark.parametrize(("command", "bad"), ROWS, ids=[" ".join(r[:1] + r[1]) for r in ROWS])
@pytest.mark.usefixtures("alarm")
def test_bad_input_is_one_line_and_exit_2(
    command: str,
    bad: tuple[str, ...],
    places: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in [k for k in os.environ if k.startswith("FEDMQ_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(places["tmp"])
    argv = [command, *(arg.format(**places) for arg in bad)]
    code, out, err = call(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert " rounds, " not in out, "the run's banner came before the refusal"
    assert code == 2, (argv, err)
    assert len(lines) == 1, (argv, err)
    assert "Traceback" not in err and "error" in lines[0], (argv, err)
    assert lines[0].startswith("fedmq"), lines[0]


def test_an_unreachable_broker_names_the_url_and_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = call(["run", "--broker", REFUSED, "--connect-timeout", "0.5"], capsys)
    assert code == 2
    assert err.strip() == (
        f"fedmq run: error: no connection to {REFUSED} after 0.5 s (connection refused)"
    )
    assert f"connecting to {REFUSED}" in out and "fedmq run:" in out.splitlines()[0]


def test_refusals_come_before_torch_is_imported() -> None:
    """Codec, fleet, partition, range and path errors at once: no torch (2-3 s) first."""
    script = """
import sys
from fedmq.cli.main import main
bad = [["run", "--codec", "gzip9"], ["run", "--fleet", "nope:2"], ["run", "--partition", "x"],
       ["run", "--fraction", "2"], ["run", "--out", "/proc/fedmq-x"], ["cloud", "--broker",
       "mqtt://127.0.0.1:1", "--staleness", "x"], ["edge", "--broker", "mqtt://127.0.0.1:1",
       "--id", "e-0", "--profile", "nope"], ["centralized", "--seed", "-1"],
       ["serve", "--broker", "mqtt://127.0.0.1:1", "--max-rows", "0"]]
codes = [main(argv) for argv in bad]
assert codes == [2] * len(bad), codes
assert "torch" not in sys.modules, "torch was imported before the refusal"
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_a_misspelled_variable_is_named_with_its_closest_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDMQ_ROUNDZ", "5")
    code, out, err = call(["codecs"], capsys)
    assert code == 0 and "int8" in out
    assert err.strip() == (
        "fedmq codecs: warning: FEDMQ_ROUNDZ is not a fedmq setting; ignored "
        "(did you mean FEDMQ_ROUNDS?)"
    )


def test_report_of_an_interrupted_run_shows_its_finished_rounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {
            "round": r,
            "accuracy": 0.5 + r / 10,
            "bytes_up": 1000 * r,
            "bytes_down": 500,
            "participants": ["edge-0"],
            "selected": ["edge-0", "edge-1"],
        }
        for r in (1, 2)
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"round": 3, "accur'  # cut by a kill
    (tmp_path / "rounds.jsonl").write_text(text)
    code, out, err = call(["report", str(tmp_path)], capsys)
    assert code == 0, err
    assert "interrupted run" in out and "2 rounds finished" in out
    assert "round 2  acc 0.7000" in out and "1/2 edges" in out


def test_each_cloud_flag_is_one_the_cloud_reads() -> None:
    """Issue 20: `fedmq cloud` takes a run setting only if its CloudConfig or run dir uses it."""
    from fedmq.cli.config import FIELDS
    from fedmq.cloud_node import CloudConfig

    cloud = next(a for a in build_parser()._actions if a.dest == "command").choices["cloud"]  # type: ignore[index]
    taken = {a.dest for a in cloud._actions} & set(FIELDS)
    read = {f.name for f in fields(CloudConfig)} | {"out", "strategy", "server_opt",
                                                    "server_lr"}  # fmt: skip
    assert taken <= read, taken - read
    assert set(FIELDS) - taken == set(CLOUD_SKIP)
    assert set(CENTRALIZED_ONLY) <= set(FIELDS)


def test_report_of_a_cloud_run_lists_its_rounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fedmq cloud` counts bytes at the cloud: no edge-side plots, but no traceback either."""
    row = {"round": 1, "accuracy": 0.8, "cloud_received": 2048, "cloud_sent": 1024,
           "participants": ["edge-0", "edge-1"], "selected": ["edge-0", "edge-1"]}  # fmt: skip
    (tmp_path / "rounds.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps({"final_accuracy": 0.8, "rounds": 1}))
    code, out, err = call(["report", str(tmp_path)], capsys)
    assert code == 0, err
    assert "round 1  acc 0.8000  in 2.0 KiB  out 1.0 KiB  2/2 edges" in out


def test_the_default_run_folder_is_checked_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/proc")  # runs/ cannot be made here, not even by root
    code, _, err = call(["run", "--rounds", "1"], capsys)
    assert code == 2
    assert err.startswith("fedmq run: error: --out (default) runs: cannot write in /proc")
