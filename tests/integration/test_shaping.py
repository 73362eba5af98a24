"""The link shaper and the estimator against real sockets and real brokers."""

import asyncio
import time
from pathlib import Path

import pytest

from fedmq.cli.config import RunConfig
from fedmq.cli.launcher import run_federated
from fedmq.tinyml_profiles import LinkProfile
from fedmq.tinyml_profiles.shaper import LinkShaper
from fedmq.transport import Session, SessionConfig
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


async def _sink_server() -> tuple[asyncio.Server, list[float], list[int]]:
    arrivals: list[float] = []
    sizes: list[int] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            arrivals.append(time.perf_counter())
            sizes.append(len(data))
        writer.close()

    return await asyncio.start_server(sink, "127.0.0.1", 0), arrivals, sizes


async def test_rate_within_five_percent() -> None:
    server, arrivals, sizes = await _sink_server()
    port = server.sockets[0].getsockname()[1]
    link = LinkProfile(up_bps=2_000_000, down_bps=2_000_000)
    async with LinkShaper(link, "127.0.0.1", port) as shaper:
        _, writer = await asyncio.open_connection("127.0.0.1", shaper.port)
        start = time.perf_counter()
        writer.write(bytes(256 * 1024))
        await writer.drain()
        await wait_until(lambda: sum(sizes) == 256 * 1024, timeout=10)
        rate = 256 * 1024 * 8 / (arrivals[-1] - start)
        writer.close()
        assert shaper.meter.sent == 256 * 1024
    server.close()
    assert rate == pytest.approx(2_000_000, rel=0.05)


async def test_latency_is_half_the_rtt_each_way() -> None:
    server, arrivals, _ = await _sink_server()
    port = server.sockets[0].getsockname()[1]
    link = LinkProfile(up_bps=10_000_000, down_bps=10_000_000, rtt_ms=400)
    async with LinkShaper(link, "127.0.0.1", port) as shaper:
        _, writer = await asyncio.open_connection("127.0.0.1", shaper.port)
        start = time.perf_counter()
        writer.write(b"ping")
        await writer.drain()
        await wait_until(lambda: bool(arrivals), timeout=5)
        writer.close()
    server.close()
    assert 0.19 <= arrivals[0] - start <= 0.35


async def test_an_outage_cuts_the_session_and_it_comes_back(amqtt_url: str) -> None:
    host, port = amqtt_url.removeprefix("mqtt://").split(":")
    link = LinkProfile(up_bps=10_000_000, down_bps=10_000_000, outage_every_s=1.0, outage_s=0.3)
    got: list[bytes] = []
    async with LinkShaper(link, host, int(port), seed=1) as shaper:
        cfg = SessionConfig(shaper.url, "flaky", subscriptions=("t/x",), backoff_max=0.3)
        async with (
            Session(cfg, lambda t, p: got.append(p)) as s,
            Session(SessionConfig(amqtt_url, "steady"), lambda t, p: None) as pub,
        ):
            await wait_until(lambda: shaper.stats.outages >= 1 and s.reconnects >= 1, timeout=40)
            # The link keeps flapping: publish until one gets through a connected window.
            for _ in range(40):
                await wait_until(lambda: s.connected, timeout=30)
                await pub.publish("t/x", b"still here")
                await asyncio.sleep(0.5)
                if b"still here" in got:
                    break
            assert b"still here" in got


async def test_estimate_is_exact_for_fixed_size_codecs(broker_url: str, tmp_path: Path) -> None:
    """fp32 without compression: every byte is predictable, so the estimate must be exact
    but for the few racy control messages (a cleared retained topic, a ping)."""
    cfg = RunConfig(
        clients=3,
        rounds=2,
        local_epochs=1,
        codec="fp32",
        downlink_codec="fp32",
        delta_codec="fp32",
        broker=broker_url,
        job="est",
        out=str(tmp_path / "run"),
    )
    summary, _ = await run_federated(cfg)
    for way in ("up", "down"):
        assert abs(summary[f"estimate_error_{way}_pct"]) < 0.2, summary
    assert abs(summary["naive_error_up_pct"]) > 1


async def test_a_shaped_fleet_meets_its_estimate_and_bound(tmp_path: Path) -> None:
    cfg = RunConfig(
        fleet="esp32s3-wifi:2,ltem-modem:1",
        rounds=3,
        local_epochs=1,
        codec="int8+zstd",
        out=str(tmp_path / "fleet"),
    )
    summary, out = await run_federated(cfg)
    assert summary["clients"] == 3
    assert abs(summary["estimate_error_up_pct"]) < 3
    assert abs(summary["estimate_error_down_pct"]) < 3
    bounds, seconds = summary["round_bound_seconds"], summary["round_seconds"]
    assert len(bounds) == len(seconds) == 3
    # LTE-M at 1 Mb/s bounds the round: a real run cannot beat the bound, nor lag it far.
    # Measured 1.10-1.12x in round 1 (the full-model fetch) and 1.04-1.10x after, over 12 runs
    # on a shared 2-core machine at load average up to 4.5; 1.3x leaves room for a busier one
    # (docs/benchmarks.md, link-bound efficiency).
    assert all(b > 0.2 for b in bounds)
    assert all(0.95 * b <= s <= 1.3 * b for s, b in zip(seconds, bounds, strict=True)), [
        s / b for s, b in zip(seconds, bounds, strict=True)
    ]
    assert (out / "bytes.png").stat().st_size > 10_000
    assert (out / "round_time.png").stat().st_size > 10_000
