"""The transport against real brokers on loopback: embedded amqtt and a Mosquitto we start."""

import asyncio
import socket

import pytest

from fedmq.broker import BrokerConfig, EmbeddedBroker
from fedmq.errors import TransportError
from fedmq.transport import ByteMeter, Session, SessionConfig
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.integration


async def test_chunked_publish_metered_on_both_sockets(broker_url: str) -> None:
    got: list[tuple[str, bytes]] = []
    payloads = [bytes([i]) * (100_000 + i) for i in range(12)]
    sub_cfg = SessionConfig(broker_url, "t-sub", subscriptions=("t/data/#",))
    async with (
        Session(sub_cfg, lambda t, p: got.append((t, p))) as sub,
        Session(SessionConfig(broker_url, "t-pub"), lambda t, p: None) as pub,
    ):
        await pub.publish_all([(f"t/data/{i}", p) for i, p in enumerate(payloads)])
        await wait_until(lambda: len(got) == len(payloads))
    assert sorted(got) == sorted((f"t/data/{i}", p) for i, p in enumerate(payloads))
    total = sum(map(len, payloads))
    # What crossed each socket: every payload plus MQTT headers, acks and the session's own traffic.
    assert total < pub.meter.sent < total * 1.01
    assert total < sub.meter.received < total * 1.01


async def test_birth_is_retained_and_the_will_fires_when_a_node_vanishes(broker_url: str) -> None:
    seen: list[bytes] = []
    cfg = SessionConfig(broker_url, "t-edge", will=("t/st/edge", b"offline"),
                        birth=("t/st/edge", b"online"))  # fmt: skip
    edge = Session(cfg, lambda t, p: None)
    await edge.__aenter__()
    watcher_cfg = SessionConfig(broker_url, "t-watch", subscriptions=("t/st/#",))
    async with Session(watcher_cfg, lambda t, p: seen.append(p)):
        await wait_until(lambda: seen == [b"online"])  # retained birth reaches a late subscriber
        client = edge._client
        assert client is not None
        # Kill the socket under paho without a DISCONNECT: the broker must publish the will.
        client._client.socket().shutdown(socket.SHUT_RDWR)
        await wait_until(lambda: b"offline" in seen, timeout=15)
        await wait_until(lambda: seen[-1] == b"online", timeout=15)  # it reconnects by itself
    assert edge.reconnects >= 1
    await edge.__aexit__(None, None, None)


async def test_reconnects_after_the_broker_restarts() -> None:
    port = free_port()
    got: list[bytes] = []
    broker = EmbeddedBroker(BrokerConfig(port=port))
    await broker.start()
    cfg = SessionConfig(f"mqtt://127.0.0.1:{port}", "t-r", subscriptions=("t/r",),
                        backoff_max=0.5)  # fmt: skip
    async with Session(cfg, lambda t, p: got.append(p)) as s:
        await broker.stop()
        await wait_until(lambda: not s.connected)
        broker = EmbeddedBroker(BrokerConfig(port=port))
        await broker.start()
        await wait_until(lambda: s.connected, timeout=15)
        await s.publish("t/r", b"after restart")  # re-subscribed after the reconnect
        await wait_until(lambda: got == [b"after restart"])
        assert s.reconnects == 1
    await broker.stop()


async def test_publish_waits_out_an_outage() -> None:
    port = free_port()
    broker = EmbeddedBroker(BrokerConfig(port=port))
    await broker.start()
    got: list[bytes] = []
    url = f"mqtt://127.0.0.1:{port}"
    async with Session(SessionConfig(url, "t-p", backoff_max=0.3), lambda t, p: None) as pub:
        await broker.stop()
        await wait_until(lambda: not pub.connected)
        pending = asyncio.create_task(pub.publish("t/q", b"queued"))
        await asyncio.sleep(0.5)
        assert not pending.done()
        broker = EmbeddedBroker(BrokerConfig(port=port))
        await broker.start()
        async with Session(SessionConfig(url, "t-s", subscriptions=("t/q",)),
                           lambda t, p: got.append(p)):  # fmt: skip
            await asyncio.wait_for(pending, 15)
            await wait_until(lambda: got == [b"queued"])
    await broker.stop()


async def test_embedded_broker_drops_an_oversized_packet_before_reading_it() -> None:
    async with EmbeddedBroker(BrokerConfig(port=0, max_packet=64 * 1024)) as broker:
        host, port = "127.0.0.1", broker.port
        reader, writer = await asyncio.open_connection(host, port)
        connect = bytes.fromhex("101000044d5154540402003c0004") + b"evil"
        writer.write(connect)
        assert (await reader.readexactly(4))[0] == 0x20  # CONNACK
        # PUBLISH declaring 200 MiB; we send only its header and a few bytes.
        n, length = 200 << 20, bytearray()
        while True:
            byte, n = n % 128, n // 128
            length.append(byte | (0x80 if n else 0))
            if not n:
                break
        writer.write(bytes([0x30]) + bytes(length) + b"\x00\x01t" + b"x" * 100)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the broker hung up
        assert broker.rejected_packets == 1
        writer.close()
        # and it keeps serving everyone else
        got: list[bytes] = []
        async with Session(SessionConfig(broker.url, "ok", subscriptions=("t",)),
                           lambda t, p: got.append(p)) as s:  # fmt: skip
            await s.publish("t", b"fine")
            await wait_until(lambda: got == [b"fine"])


async def test_client_refuses_to_send_over_its_packet_limit(amqtt_url: str) -> None:
    cfg = SessionConfig(amqtt_url, "t-big", max_packet=10_000)
    async with Session(cfg, lambda t, p: None) as s:
        with pytest.raises(TransportError, match="over the"):
            await s.publish("t/big", bytes(20_000))


async def test_client_drops_an_oversized_inbound_packet(mosquitto_url: str) -> None:
    # Read past and dropped, not answered with a disconnect: a retained one would come back on
    # every reconnect (issue 12; more in test_oversized_retained.py).
    meter = ByteMeter()
    got: list[bytes] = []
    cfg = SessionConfig(mosquitto_url, "t-small", subscriptions=("t/in",), max_packet=50_000)
    async with (
        Session(cfg, lambda t, p: got.append(p), meter) as small,
        Session(SessionConfig(mosquitto_url, "t-src"), lambda t, p: None) as src,
    ):
        await src.publish("t/in", bytes(500_000))
        await wait_until(lambda: small.oversized == 1, timeout=15)
        await src.publish("t/in", b"small one")
        await wait_until(lambda: got == [b"small one"], timeout=15)
        assert small.reconnects == 0


async def test_connect_failure_is_a_transport_error() -> None:
    cfg = SessionConfig(f"mqtt://127.0.0.1:{free_port()}", "nobody", connect_timeout=1.0)
    with pytest.raises(TransportError, match="no connection"):
        async with Session(cfg, lambda t, p: None):
            pass
