"""Passwords, the topic ACL and TLS on real brokers on loopback: the embedded amqtt broker and
a Mosquitto started from the shipped mosquitto-secure.conf, sharing one password file (written
by fedmq), one ACL file (the shipped fedmq.acl) and one trial PKI."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedmq.errors import TransportError
from fedmq.security import load_acl, set_password
from fedmq.security.certs import make_trial_pki
from fedmq.transport import Session, SessionConfig
from tests.conftest import BrokerThread, broker_process, free_port, wait_until

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).parents[2] / "src/fedmq/broker/configs"
USERS = ("cloud", "edge-0", "edge-1")
J = "fedmq/j"


def password(user: str) -> str:
    return f"pw of {user}"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Layout of /etc/fedmq in mosquitto-secure.conf: passwd, fedmq.acl, certs/."""
    d = tmp_path_factory.mktemp("fedmq-etc")
    make_trial_pki(d / "certs", USERS)
    make_trial_pki(d / "other-ca", [])  # a CA nobody here trusts
    for user in USERS:
        set_password(d / "passwd", user, password(user), iterations=1000)
    shutil.copy(CONFIGS / "fedmq.acl", d / "fedmq.acl")
    return d


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc and proc.stderr else ""
                pytest.fail(f"nothing listening on {port}: {err}")
            time.sleep(0.05)


@pytest.fixture
def amqtt_secure(files: Path) -> Iterator[BrokerThread]:
    from fedmq.broker import BrokerConfig

    certs = files / "certs"
    config = BrokerConfig(
        port=0, allow_anonymous=False, password_file=str(files / "passwd"),
        acl=load_acl(files / "fedmq.acl"), tls_cert=str(certs / "server.pem"),
        tls_key=str(certs / "server.key"), tls_ca=str(certs / "ca.pem"),
    )  # fmt: skip
    thread = BrokerThread(config)
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def mosquitto_secure(files: Path, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto")
    port = free_port()
    shipped = (CONFIGS / "mosquitto-secure.conf").read_text().replace("/etc/fedmq/", f"{files}/")
    lines = [
        f"listener {port} 127.0.0.1" if line.startswith("listener ") else line
        for line in shipped.splitlines()
        if not line.startswith("log_")
    ]
    lines.append("log_dest stderr")
    if os.geteuid() == 0:
        lines.append("user root")  # else it drops to `mosquitto`, who cannot read our 0600 files
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    with broker_process([binary, "-c", str(conf)], port):
        yield f"mqtts://127.0.0.1:{port}"


@pytest.fixture(params=["amqtt", "mosquitto"])
def secure(request: pytest.FixtureRequest) -> tuple[str, BrokerThread | None]:
    """(url, the embedded broker or None): each test on both brokers."""
    if request.param == "mosquitto":
        return str(request.getfixturevalue("mosquitto_secure")), None
    thread: BrokerThread = request.getfixturevalue("amqtt_secure")
    assert thread.broker is not None
    return thread.broker.url, thread


def node(
    files: Path, url: str, user: str | None, *, pw: str | None = None, ca: str = "certs",
    cert: bool = True, **kw: Any,
) -> SessionConfig:  # fmt: skip
    """The SessionConfig a node passes: its username and password, the CA, its certificate."""
    certs, device = files / "certs", user if user in USERS else "edge-0"
    return SessionConfig(
        url, f"j-{user or 'anon'}", username=user,
        password=pw or (password(user) if user else None), tls_ca=str(files / ca / "ca.pem"),
        tls_cert=str(certs / f"{device}.pem") if cert else None,
        tls_key=str(certs / f"{device}.key") if cert else None,
        **{"connect_timeout": 10, "publish_timeout": 10, **kw},
    )  # fmt: skip


Got = list[tuple[str, bytes]]


async def test_a_client_trusting_the_ca_connects_over_tls(
    files: Path, secure: tuple[str, BrokerThread | None]
) -> None:
    url, _ = secure
    assert url.startswith("mqtts://")
    got: Got = []
    payload = os.urandom(100_000)
    cloud_cfg = node(files, url, "cloud", subscriptions=(f"{J}/update/+",))
    async with (
        Session(cloud_cfg, lambda t, p: got.append((t, p))),
        Session(node(files, url, "edge-0"), lambda t, p: None) as edge,
    ):
        await edge.publish(f"{J}/update/edge-0", payload)
        await wait_until(lambda: got == [(f"{J}/update/edge-0", payload)])
    assert edge.meter.sent > len(payload)  # metering still sees the (encrypted) socket


async def test_a_wrong_ca_is_refused_with_a_clear_error(
    files: Path, secure: tuple[str, BrokerThread | None]
) -> None:
    url, _ = secure
    started = time.monotonic()
    with pytest.raises(TransportError, match="TLS: cannot verify the certificate of mqtts://"):
        async with Session(node(files, url, "edge-0", ca="other-ca"), lambda t, p: None):
            pass
    assert time.monotonic() - started < 5  # at once, not after connect_timeout


async def test_a_client_without_a_certificate_is_refused(
    files: Path, secure: tuple[str, BrokerThread | None]
) -> None:
    url, _ = secure
    cfg = node(files, url, "edge-0", cert=False, connect_timeout=3, ack_timeout=1)
    with pytest.raises(TransportError, match="requires client certificates"):
        async with Session(cfg, lambda t, p: None):
            pass


@pytest.mark.parametrize(
    ("user", "pw"), [(None, None), ("edge-0", "wrong"), ("edge-9", "pw of edge-9")]
)
async def test_anonymous_clients_and_bad_passwords_are_refused(
    files: Path, secure: tuple[str, BrokerThread | None], user: str | None, pw: str | None
) -> None:
    url, _ = secure
    with pytest.raises(TransportError, match="refused the connection"):
        async with Session(node(files, url, user, pw=pw), lambda t, p: None):
            pass


async def test_denied_publishes_reach_no_subscriber(
    files: Path, secure: tuple[str, BrokerThread | None]
) -> None:
    url, broker = secure
    cloud_got: Got = []
    edge1_got: Got = []
    cloud_cfg = node(files, url, "cloud", subscriptions=(f"{J}/update/+", f"{J}/status/+"))
    edge1_cfg = node(files, url, "edge-1", subscriptions=(f"{J}/task",))
    async with (
        Session(cloud_cfg, lambda t, p: cloud_got.append((t, p))) as cloud,
        Session(edge1_cfg, lambda t, p: edge1_got.append((t, p))),
        Session(node(files, url, "edge-0"), lambda t, p: None) as edge0,
    ):
        # MQTT 3.1.1 has no way to say "denied": both brokers acknowledge and drop.
        for topic in (f"{J}/update/edge-1", f"{J}/task", f"{J}/status/edge-1"):
            await edge0.publish(topic, b"forged")
        await edge0.publish(f"{J}/update/edge-0", b"mine")
        await cloud.publish(f"{J}/task", b"task")
        await wait_until(lambda: len(cloud_got) == 1 and len(edge1_got) == 1)
        await asyncio.sleep(0.3)  # anything forged would have come first, and more
    assert cloud_got == [(f"{J}/update/edge-0", b"mine")]
    assert edge1_got == [(f"{J}/task", b"task")]
    if broker is not None:
        assert broker.broker is not None
        assert broker.broker.acl_denials.get("publish") == 3


async def test_an_edge_cannot_read_other_edges_updates(
    files: Path, secure: tuple[str, BrokerThread | None]
) -> None:
    url, _ = secure
    cloud_got: Got = []
    spy_got: Got = []
    spy_cfg = node(files, url, "edge-1", subscriptions=(f"{J}/update/+", f"{J}/#"))
    async with (
        Session(node(files, url, "cloud", subscriptions=(f"{J}/update/+",)),
                lambda t, p: cloud_got.append((t, p))),
        Session(spy_cfg, lambda t, p: spy_got.append((t, p))),
        Session(node(files, url, "edge-0"), lambda t, p: None) as edge0,
    ):  # fmt: skip
        await edge0.publish(f"{J}/update/edge-0", b"private")
        await wait_until(lambda: cloud_got == [(f"{J}/update/edge-0", b"private")])
        await asyncio.sleep(0.3)
    assert spy_got == []


async def test_a_will_on_a_forbidden_topic_is_never_delivered(
    files: Path, secure: tuple[str, BrokerThread | None]
) -> None:
    url, broker = secure
    got: Got = []
    async with Session(node(files, url, "cloud", subscriptions=(f"{J}/update/+",)),
                       lambda t, p: got.append((t, p))):  # fmt: skip
        forger = Session(node(files, url, "edge-0", will=(f"{J}/update/edge-1", b"forged")),
                         lambda t, p: None)  # fmt: skip
        if broker is not None:
            # amqtt publishes wills unchecked, so our auth plugin refuses them at CONNECT.
            with pytest.raises(TransportError, match="refused"):
                await forger.__aenter__()
        else:
            await forger.__aenter__()  # Mosquitto accepts it and drops the will when it fires
            client = forger._client
            assert client is not None
            client._client.socket().shutdown(socket.SHUT_RDWR)
            await asyncio.sleep(1)
            await forger._stop()
        async with Session(node(files, url, "edge-0"), lambda t, p: None) as edge0:
            await edge0.publish(f"{J}/update/edge-0", b"mine")
            await wait_until(lambda: len(got) >= 1)
    assert got == [(f"{J}/update/edge-0", b"mine")]


async def test_the_embedded_broker_takes_a_device_added_by_mosquitto_passwd(
    files: Path, amqtt_secure: BrokerThread, tmp_path: Path
) -> None:
    assert amqtt_secure.broker is not None
    url = amqtt_secure.broker.url
    passwd = files / "passwd"
    original = passwd.read_text()
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        pytest.fail("mosquitto_passwd is not installed: apt-get install -y mosquitto")
    try:
        cmd = [binary, "-b", str(passwd), "edge-1", "fresh one"]
        await asyncio.to_thread(subprocess.run, cmd, check=True)
        async with Session(node(files, url, "edge-1", pw="fresh one"), lambda t, p: None):
            pass  # re-read on change, no restart
        with pytest.raises(TransportError, match="refused"):
            async with Session(node(files, url, "edge-1"), lambda t, p: None):
                pass  # the old password is gone
    finally:
        passwd.write_text(original)


def test_cli_broker_serves_tls_passwords_and_the_acl(files: Path) -> None:
    port = free_port()
    certs = files / "certs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmq.cli.main", "broker", "--port", str(port),
         "--password-file", str(files / "passwd"), "--tls-cert", str(certs / "server.pem"),
         "--tls-key", str(certs / "server.key"), "--tls-ca", str(certs / "ca.pem")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_port(port, proc)
        url = f"mqtts://127.0.0.1:{port}"

        async def check() -> Got:
            got: Got = []
            async with (
                Session(node(files, url, "cloud", subscriptions=(f"{J}/update/+",)),
                        lambda t, p: got.append((t, p))),
                Session(node(files, url, "edge-0"), lambda t, p: None) as edge0,
            ):  # fmt: skip
                await edge0.publish(f"{J}/update/edge-1", b"forged")  # the built-in ACL
                await edge0.publish(f"{J}/update/edge-0", b"mine")
                await wait_until(lambda: len(got) >= 1)
            return got

        assert asyncio.run(check()) == [(f"{J}/update/edge-0", b"mine")]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert f"listening on mqtts://127.0.0.1:{port}, passwords required" in out.decode()
