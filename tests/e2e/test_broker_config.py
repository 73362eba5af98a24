"""`fedmq broker-config`: the config it writes starts a real Mosquitto that nodes can use."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmq.cli.brokerconf import CONFIGS, LIMITS
from fedmq.errors import TransportError
from fedmq.transport import Session, SessionConfig
from tests.conftest import broker_process, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

FEDMQ = [sys.executable, "-m", "fedmq.cli.main"]


def mosquitto() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does this)")
    return binary


def broker_config(*args: str) -> Path:
    out = Path(args[args.index("--out") + 1])
    proc = subprocess.run([*FEDMQ, "broker-config", *args], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out}; start the broker with: mosquitto -c {out}"
    return out


async def round_trip(url: str, **identity: str) -> None:
    got: list[bytes] = []
    sub = SessionConfig(url, "t-sub", subscriptions=("fedmq/t/status/#",), **identity)
    async with (
        Session(sub, lambda t, p: got.append(p)),
        Session(SessionConfig(url, "t-pub", **identity), lambda t, p: None) as pub,
    ):
        await pub.publish("fedmq/t/status/x", b"hello")
        await wait_until(lambda: got == [b"hello"])


def test_the_limits_are_the_shipped_configs() -> None:
    shipped = (CONFIGS / "mosquitto.conf").read_text().splitlines()
    settings = [line for line in LIMITS if not line.startswith("#")]
    assert all(line in shipped for line in settings), set(settings) - set(shipped)


async def test_an_open_broker_on_any_port(tmp_path: Path) -> None:
    port = free_port()
    conf = broker_config(
        "--port", str(port), "--allow-anonymous", "--out", str(tmp_path / "m.conf")
    )
    assert f"listener {port} 127.0.0.1" in conf.read_text()
    with broker_process([mosquitto(), "-c", str(conf)], port):
        await round_trip(f"mqtt://127.0.0.1:{port}")


@pytest.fixture
def secure_files() -> Iterator[Path]:
    """Files from `fedmq passwd` and `fedmq certs`, in a folder with a blank in its name.

    Outside pytest's own 0700 tmp folder: Mosquitto started as root reads them as the user
    mosquitto (docs/security.md), so they are made readable to it here.
    """
    base = Path(tempfile.mkdtemp(prefix="fedmq-broker-config-"))
    files = base / "my files"
    files.mkdir()
    for user, password in (("cloud", "cloud-pw"), ("edge-0", "edge-pw")):
        made = subprocess.run([*FEDMQ, "passwd", str(files / "passwd"), user, "--password-stdin",
                               "--iterations", "1000"], input=password + "\n",
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert made.returncode == 0, made.stderr
    certs = subprocess.run([*FEDMQ, "certs", str(files / "pki"), "--device", "cloud"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert certs.returncode == 0, certs.stderr
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield files
    shutil.rmtree(base)


async def test_passwords_acl_and_tls_from_the_given_files(
    tmp_path: Path, secure_files: Path
) -> None:
    files = secure_files
    port = free_port()
    pki = files / "pki"
    conf = broker_config(
        "--port", str(port), "--password-file", str(files / "passwd"),
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
        "--tls-ca", str(pki / "ca.pem"), "--out", str(tmp_path / "secure.conf"),
    )  # fmt: skip
    text = conf.read_text()
    assert "allow_anonymous false" in text and "require_certificate true" in text
    assert f"acl_file {(CONFIGS / 'fedmq.acl').resolve()}" in text  # fedmq's ACL by default
    url = f"mqtts://localhost:{port}"
    tls = {"tls_ca": str(pki / "ca.pem"), "tls_cert": str(pki / "cloud.pem"),
           "tls_key": str(pki / "cloud.key")}  # fmt: skip
    with broker_process([mosquitto(), "-c", str(conf)], port):
        # The cloud may read edges' status topics under fedmq's ACL; its own reaches it.
        got: list[bytes] = []
        cloud = SessionConfig(url, "t-cloud", subscriptions=("fedmq/t/status/#",),
                              username="cloud", password="cloud-pw", **tls)  # fmt: skip
        edge = SessionConfig(url, "t-edge", username="edge-0", password="edge-pw", **tls)
        async with (
            Session(cloud, lambda t, p: got.append(p)),
            Session(edge, lambda t, p: None) as e,
        ):
            await e.publish("fedmq/t/status/edge-0", b"online")
            await wait_until(lambda: got == [b"online"])
        wrong = SessionConfig(url, "t-bad", username="cloud", password="nope",
                              connect_timeout=5, **tls)  # fmt: skip
        with pytest.raises(TransportError, match="refused"):
            async with Session(wrong, lambda t, p: None):
                pass
