"""The userspace link shaper against the kernel's tbf qdisc: a cross-check that is not circular.

    sudo .venv/bin/python bench/tbf_crosscheck.py [--rates 1000000,250000] [--rounds 3]
        [--reps 2] [--seconds 2.5] [--codec fp32] [--link lo|veth] [--json FILE]

The link-bound figure in docs/benchmarks.md compares round times against a bound computed with
the same formula (bytes x 8 / rate) that the userspace shaper sleeps out, so it measures harness
overhead. This script times the same MQTT bytes three ways, per rate:

  (a) userspace: a client publishes through fedmq's `LinkShaper` (RTT 0) to `fedmq broker` on
      plain loopback;
  (b) kernel: the same client, no userspace shaper, to `fedmq broker` inside a network namespace
      of its own whose `lo` (MTU 1500) has a `tbf` qdisc at the same rate (tbf on `lo` meters
      both directions: the data and the TCP ACKs/PUBACKs coming back share the one bucket).
      `--link veth` instead puts the client and the broker in two namespaces of their own joined
      by a veth pair, with a tbf on each end: one bucket per direction, as the userspace shaper;
  (c) estimate: the estimator's transfer time for those MQTT bytes (`estimator._transfer`:
      PUBLISH bytes x 8 / rate, RTT 0).

Also (d): the same client with no shaping at all (the harness floor), and what tbf itself
counted on the uplink's qdisc (`tc -s`: bytes with their Ethernet/IP/TCP headers; on `lo` also
the ACKs coming back), which explains (b)/(c).

The payload is what one edge of the default run sends: updates of the default MLP (digits,
9,610 parameters; a seeded N(0, 0.01) change) chunked by fedmq's codec, published QoS 1 by a
fedmq `Session`; a transfer is timed from the first PUBLISH to the last PUBACK. Each rate sends
as many updates as take about `--seconds` at that rate, so scheduling noise is small beside it.
Samples of (a) and (b) are interleaved (`--rounds` x `--reps` each) and reported as medians.

Needs root, `ip` and `tc` (iproute2). Only namespaces it creates (`fedmq-tbf-<pid>`, or
`fedmq-tbf-<pid>-c` and `-b` with `--link veth`) and loopback addresses (or 10.211.0.0/30 on the
veth pair inside them) are used; the namespaces are deleted on exit, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
FEDMQ = str(Path(PY).with_name("fedmq"))
NS_PORT = 18830  # inside our own namespace: nothing else listens there
MTU = 1500  # the namespace's lo: an Ethernet-sized link (lo's 64 KiB frames exceed any burst)
TOPIC = "fedmq/tbfcheck/update/edge-0"


def can_run() -> str:
    """Empty if this machine can run the kernel side, else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns, tc qdisc)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (iproute2)"
    return ""


# -- payload ---------------------------------------------------------------------------------


def update_payloads(codec: str, seed: int = 0) -> list[bytes]:
    """One update of the default MLP as fedmq's codec chunks it (default --max-payload)."""
    import numpy as np

    from fedmq.codec import CodecSpec, split_vector
    from fedmq.workloads.models import build_model, num_params

    model = build_model("mlp", num_features=64, num_classes=10, feature_shape=(8, 8), seed=seed)
    change = np.random.default_rng(seed).normal(0.0, 0.01, num_params(model)).astype(np.float32)
    return split_vector(
        change,
        CodecSpec.parse(codec),
        max_payload=128 * 1024,
        job="tbfcheck",
        sender="edge-0",
        role="update",
        round=1,
        version=0,
        num_samples=180,
        metrics={"loss": 0.5, "accuracy": 0.9, "seconds": 0.1},
    )


def publish_bytes(payloads: list[bytes]) -> int:
    """Bytes of the MQTT PUBLISH packets (QoS 1) that carry these payloads."""
    from fedmq.tinyml_profiles import mqtt_sizes

    return sum(mqtt_sizes.publish_size(TOPIC, len(p)) for p in payloads)


def estimate_seconds(payloads: list[bytes], bps: float) -> float:
    """The estimator's upload time for these publishes (`_transfer` in estimator.py, RTT 0)."""
    return publish_bytes(payloads) * 8.0 / bps


def _write_payloads(payloads: list[bytes], path: Path) -> None:
    path.write_bytes(b"".join(struct.pack(">I", len(p)) + p for p in payloads))


def _read_payloads(path: Path) -> list[bytes]:
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack_from(">I", data, i)
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out


# -- worker: one client, timed transfers -----------------------------------------------------


async def _transfers(url: str, payloads: list[bytes], reps: int, shaper_bps: float) -> list[float]:
    from fedmq.tinyml_profiles import LinkProfile
    from fedmq.tinyml_profiles.shaper import LinkShaper
    from fedmq.transport import Session, SessionConfig

    host, port = url.removeprefix("mqtt://").split(":")
    async with asyncio.timeout(60):  # the broker may still be starting: poll, not back off
        while True:
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
    async with contextlib.AsyncExitStack() as stack:
        if shaper_bps > 0:
            link = LinkProfile(up_bps=shaper_bps, down_bps=shaper_bps)
            shaper = await stack.enter_async_context(LinkShaper(link, host, int(port)))
            url = shaper.url
        cfg = SessionConfig(url, f"tbfcheck-{os.getpid()}", connect_timeout=30.0)
        session = await stack.enter_async_context(Session(cfg, lambda t, p: None))
        await session.publish(TOPIC, b"warm-up")
        times = []
        for _ in range(reps):
            await asyncio.sleep(0.3)  # an idle link: the queues drain, tbf's bucket refills
            start = time.perf_counter()
            await session.publish_all([(TOPIC, p) for p in payloads])  # QoS 1: every PUBACK
            times.append(time.perf_counter() - start)
        return times


def _worker(args: argparse.Namespace) -> None:
    payloads = _read_payloads(Path(args.payloads))
    times = asyncio.run(_transfers(args.url, payloads, args.reps, args.shaper_bps))
    print(json.dumps(times))


# -- orchestration ---------------------------------------------------------------------------


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def namespace(name: str) -> Iterator[str]:
    """A network namespace of our own with lo up at MTU 1500; deleted on exit."""
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "mtu", str(MTU), "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@dataclass(frozen=True)
class KernelLink:
    client_ns: str  # where the client runs
    broker_ns: str  # where the broker runs
    broker_host: str
    devices: tuple[tuple[str, str], ...]  # (namespace, device) shaped by tbf; first: uplink


@contextlib.contextmanager
def kernel_link(name: str, kind: str) -> Iterator[KernelLink]:
    """`lo`: client and broker in one namespace, tbf on its lo (one bucket, both directions).
    `veth`: client and broker in two namespaces of our own joined by a veth pair (10.211.0.0/30,
    MTU 1500, nothing else on it), tbf on each end's egress (one bucket per direction)."""
    if kind == "lo":
        with namespace(name) as ns:
            yield KernelLink(ns, ns, "127.0.0.1", ((ns, "lo"),))
        return
    with namespace(f"{name}-c") as c, namespace(f"{name}-b") as b:
        _run("ip", "-n", c, "link", "add", "vc", "type", "veth", "peer", "name", "vb", "netns", b)
        for ns, dev, addr in ((c, "vc", "10.211.0.1/30"), (b, "vb", "10.211.0.2/30")):
            _run("ip", "-n", ns, "link", "set", dev, "mtu", str(MTU))
            _run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
        yield KernelLink(c, b, "10.211.0.2", ((c, "vc"), (b, "vb")))


def set_tbf(ns: str, dev: str, bps: float) -> None:
    """tbf at `bps` on the device. Burst: one full frame (the least tbf accepts), so the
    bucket lends at most MTU + 14 bytes ahead of the rate; a large queue, so no drops."""
    _run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
         "rate", f"{int(bps)}bit", "burst", str(MTU + 14), "limit", str(1 << 20))  # fmt: skip


def tbf_sent_bytes(ns: str, dev: str) -> int:
    out = _run("ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev)
    words = out.split()
    return int(words[words.index("Sent") + 1])


@contextlib.contextmanager
def broker(port: int, ns: str | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    argv = [FEDMQ, "broker", "--allow-anonymous", "--host", host, "--port", str(port)]
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield f"mqtt://{host}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker(
    url: str, payload_file: Path, reps: int, *, shaper_bps: float = 0.0, ns: str | None = None
) -> list[float]:
    argv = [PY, str(Path(__file__).resolve()), "--worker", "--url", url,
            "--payloads", str(payload_file), "--reps", str(reps),
            "--shaper-bps", str(shaper_bps)]  # fmt: skip
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300, env=env)
    return [float(t) for t in json.loads(out.stdout.strip().splitlines()[-1])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def crosscheck(
    rates: list[float],
    *,
    seconds: float = 2.5,
    rounds: int = 3,
    reps: int = 2,
    codec: str = "fp32",
    ns_name: str | None = None,
    floor: bool = True,
    link: str = "lo",
) -> dict[str, Any]:
    """Run (a), (b), (c) [and (d)] at each rate; medians and ratios, as JSON types."""
    if why := can_run():
        raise SystemExit(f"tbf_crosscheck: {why}")
    update = update_payloads(codec)
    ns_name = ns_name or f"fedmq-tbf-{os.getpid()}"
    results: dict[str, Any] = {
        "codec": codec,
        "update_payload_bytes": sum(map(len, update)),
        "update_publish_bytes": publish_bytes(update),
        "link": link,
        "rates": [],
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        kernel_link(ns_name, link) as kl,
        broker(free_port()) as host_url,
        broker(NS_PORT, kl.broker_ns, kl.broker_host) as ns_url,
    ):
        up_ns, up_dev = kl.devices[0]
        for bps in rates:
            per_update = estimate_seconds(update, bps)
            n = max(1, round(seconds / per_update))
            payloads = update * n
            path = Path(tmp) / f"payloads-{int(bps)}"
            _write_payloads(payloads, path)
            for ns, dev in kl.devices:
                set_tbf(ns, dev, bps)
            user: list[float] = []
            kernel: list[float] = []
            counted: list[float] = []
            for _ in range(rounds):
                user += worker(host_url, path, reps, shaper_bps=bps)
                before = tbf_sent_bytes(up_ns, up_dev)
                kernel += worker(ns_url, path, reps, ns=kl.client_ns)
                counted.append((tbf_sent_bytes(up_ns, up_dev) - before) / reps)
            a, b = statistics.median(user), statistics.median(kernel)
            c = estimate_seconds(payloads, bps)
            tbf_bytes = statistics.median(counted)
            row = {
                "bps": bps, "updates": n, "publish_bytes": publish_bytes(payloads),
                "userspace_s": a, "kernel_tbf_s": b, "estimate_s": c,
                "userspace_samples": user, "kernel_samples": kernel,
                "tbf_counted_bytes": tbf_bytes,
                "tbf_counted_s": (tbf_bytes - MTU - 14) * 8.0 / bps,
                "a_over_b": a / b, "a_over_c": a / c, "b_over_c": b / c,
            }  # fmt: skip
            if floor:
                row["unshaped_s"] = statistics.median(worker(host_url, path, reps))
            results["rates"].append(row)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        "| rate | updates | MQTT bytes | (a) userspace s | (b) kernel tbf s | (c) estimate s "
        "| (a)/(b) | (a)/(c) | (b)/(c) | tbf counted B | counted/rate s | unshaped s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rates"]:
        lines.append(
            f"| {r['bps'] / 1e3:,.0f} kbit/s | {r['updates']} | {r['publish_bytes']:,} "
            f"| {r['userspace_s']:.3f} | {r['kernel_tbf_s']:.3f} | {r['estimate_s']:.3f} "
            f"| {r['a_over_b']:.3f} | {r['a_over_c']:.3f} | {r['b_over_c']:.3f} "
            f"| {r['tbf_counted_bytes']:,.0f} | {r['tbf_counted_s']:.3f} "
            f"| {r.get('unshaped_s', float('nan')):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rates", default="1000000,250000", help="bit/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=2.5, help="target time per transfer")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (a), (b)")
    parser.add_argument("--reps", type=int, default=2, help="transfers per round and side")
    parser.add_argument("--codec", default="fp32", help="the update's codec")
    parser.add_argument("--netns", default=None, help="namespace name (default fedmq-tbf-PID)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--link",
        choices=("lo", "veth"),
        default="lo",
        help="kernel side: tbf on one namespace's lo (default), or on both ends "
        "of a veth pair between two namespaces (one bucket per direction)",
    )
    parser.add_argument("--no-floor", action="store_true", help="skip (d), the unshaped floor")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--payloads", help=argparse.SUPPRESS)
    parser.add_argument("--shaper-bps", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    load = os.getloadavg()[0]
    results = crosscheck(
        [float(r) for r in args.rates.split(",")],
        seconds=args.seconds,
        rounds=args.rounds,
        reps=args.reps,
        codec=args.codec,
        ns_name=args.netns,
        floor=not args.no_floor,
        link=args.link,
    )
    results["load_before"] = load
    results["load_after"] = os.getloadavg()[0]
    print(f"kernel side: tbf on {args.link}; one update ({args.codec}): "
          f"{results['update_payload_bytes']:,} B of payload, "
          f"{results['update_publish_bytes']:,} B of MQTT PUBLISH; load average "
          f"{load:.1f} -> {results['load_after']:.1f}")  # fmt: skip
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
