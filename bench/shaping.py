"""Shaping fidelity: a 1 MiB transfer through the userspace shaper at several rates.

    .venv/bin/python bench/shaping.py [--size 1048576] [--rates 256000,1000000,10000000]

Measures the uplink direction (client -> shaper -> sink over loopback) with RTT 0, from the
first byte written to the last byte received, and reports the achieved rate against the
configured one (acceptance: within 5%). Also reports the downlink direction.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from fedmq.tinyml_profiles import LinkProfile
from fedmq.tinyml_profiles.shaper import LinkShaper


async def transfer(rate: float, size: int, direction: str) -> float:
    done = asyncio.get_running_loop().create_future()
    payload = bytes(size)

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if direction == "down":
            writer.write(payload)
            await writer.drain()
            await reader.read()
            return
        got = 0
        while got < size:
            chunk = await reader.read(65536)
            if not chunk:
                break
            got += len(chunk)
        done.set_result(time.perf_counter())
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = LinkProfile(up_bps=rate, down_bps=rate)
    async with LinkShaper(link, "127.0.0.1", port) as shaper:
        reader, writer = await asyncio.open_connection("127.0.0.1", shaper.port)
        start = time.perf_counter()
        if direction == "up":
            writer.write(payload)
            await writer.drain()
            end = await done
        else:
            got = 0
            while got < size:
                got += len(await reader.read(65536))
            end = time.perf_counter()
        writer.close()
    server.close()
    return size * 8 / (end - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--rates", default="256000,1000000,10000000")
    args = parser.parse_args()
    print("| direction | configured | measured | error |")
    print("|---|---|---|---|")
    for rate in (float(r) for r in args.rates.split(",")):
        for direction in ("up", "down"):
            measured = await transfer(rate, args.size, direction)
            err = 100 * (measured - rate) / rate
            print(f"| {direction} | {rate / 1e3:,.0f} kbit/s | {measured / 1e3:,.1f} kbit/s "
                  f"| {err:+.2f}% |", flush=True)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
