"""Oversized retained state does not poison reconnects (issue 12, item 4).

On a Mosquitto with no packet limit, a 10 MB retained message on a topic nodes subscribe to is
sent to every node on every connect. Nodes used to drop the connection on it, reconnect, get it
again, forever. Now they read past it, count and log it, and the run goes on.
"""

import asyncio
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmq.cli.config import RunConfig
from fedmq.cli.launcher import run_federated
from fedmq.transport import Session, SessionConfig, Topics
from tests.conftest import broker_process, free_port, wait_until

pytestmark = pytest.mark.integration

JOB = "poisoned"
BIG = 10 << 20  # bytes: five times the nodes' 2 MiB packet limit


def mosquitto_without_limits(folder: Path, port: int, *extra: str) -> list[str]:
    """The shipped mosquitto.conf with its packet limit taken out (Mosquitto's default)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto")
    shipped = Path(__file__).parents[2] / "src/fedmq/broker/configs/mosquitto.conf"
    keep = [
        line
        for line in shipped.read_text().splitlines()
        if not line.startswith(("listener", "log_", "max_packet_size"))
        and not any(line.startswith(e.split()[0]) for e in extra)
    ]
    conf = folder / "mosquitto-unlimited.conf"
    conf.write_text("\n".join([f"listener {port} 127.0.0.1", *keep, *extra]) + "\n")
    return [binary, "-c", str(conf)]


@pytest.fixture
def unlimited(tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    with broker_process(mosquitto_without_limits(tmp_path, port), port):
        yield f"mqtt://127.0.0.1:{port}", port


def retain(port: int, topic: str, size: int, qos: int = 1) -> None:
    """mosquitto_pub -r -s: a retained message of `size` bytes, as any third-party client."""
    binary = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
    cmd = [binary, "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-r", "-q", str(qos), "-s"]
    subprocess.run(cmd, input=b"\x01" * size, check=True, timeout=60)


async def test_nodes_read_past_a_10_mb_retained_message_and_the_run_goes_on(
    unlimited: tuple[str, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, port = unlimited
    topics = Topics(JOB)
    # The job topic (the case; the cloud replaces it when it starts), an edge's status
    # topic (the cloud subscribes to status/+) and a delta (edges subscribe to delta/+).
    for topic in (topics.jobspec, topics.status("intruder"), topics.delta(999)):
        await asyncio.to_thread(retain, port, topic, BIG)
    caplog.set_level(logging.INFO, logger="fedmq.transport.session")
    cfg = RunConfig(clients=2, rounds=2, local_epochs=1, job=JOB, broker=url,
                    out=str(tmp_path / "run"))  # fmt: skip
    async with asyncio.timeout(120):  # before: the cloud reconnected forever, and never ran
        summary, _ = await run_federated(cfg)
    assert summary["rounds"] == 2 and summary["version"] == 2  # normal traffic flowed
    messages = [r.getMessage() for r in caplog.records]
    dropped = [m for m in messages if f"dropped a {BIG + 2 + 2 + len(topics.delta(999))}" in m
               or "over the 2097152 B packet limit" in m]  # fmt: skip
    # The cloud got the status one, each edge the delta one (and maybe the job): once a node.
    assert any(f"{JOB}-cloud: dropped" in m and "status/intruder" in m for m in dropped)
    assert sum("delta/999" in m for m in dropped) == 2, dropped
    assert not [m for m in messages if "reconnect" in m or "dropping connection" in m]


async def test_an_oversized_qos1_message_is_acknowledged_so_deliveries_go_on(
    tmp_path: Path,
) -> None:
    """Mosquitto keeps an unacknowledged QoS 1 message in flight until the connection ends
    (2.0 resends only on reconnect): with one in-flight slot, one such drop would stall every
    later delivery to that node."""
    port = free_port()
    argv = mosquitto_without_limits(tmp_path, port, "max_inflight_messages 1")
    url = f"mqtt://127.0.0.1:{port}"
    got: list[bytes] = []
    cfg = SessionConfig(url, "t-node", subscriptions=("t/in",), max_packet=50_000)
    with broker_process(argv, port):
        async with (
            Session(cfg, lambda t, p: got.append(p)) as node,
            Session(SessionConfig(url, "t-src"), lambda t, p: None) as src,
        ):
            for _ in range(3):
                await src.publish("t/in", bytes(200_000), qos=1)
            await src.publish("t/in", b"small one", qos=1)
            await wait_until(lambda: got == [b"small one"], timeout=15)
            assert node.oversized == 3 and node.reconnects == 0


async def test_reading_past_a_large_message_on_a_slow_link_keeps_the_connection(
    unlimited: tuple[str, int],
) -> None:
    """3 MB at 4 Mbit/s takes 6 s: paho, which never sees those bytes, must not think the link
    dead after its 1 s keep-alive, or the node would reconnect into the same message forever."""
    from fedmq.tinyml_profiles.profiles import LinkProfile
    from fedmq.tinyml_profiles.shaper import LinkShaper

    _, port = unlimited
    await asyncio.to_thread(retain, port, "t/big", 3 << 20)
    link = LinkProfile(up_bps=4_000_000, down_bps=4_000_000)
    async with LinkShaper(link, "127.0.0.1", port) as shaper:
        cfg = SessionConfig(shaper.url, "t-slow", subscriptions=("t/big",), max_packet=50_000,
                            keepalive=1)  # fmt: skip
        async with Session(cfg, lambda t, p: None) as node:
            await wait_until(lambda: node.oversized == 1, timeout=30)
            await asyncio.sleep(2)  # keep-alives answered again after it
            assert node.reconnects == 0 and node.connected
