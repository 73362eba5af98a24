"""Asynchronous (FedBuff) against synchronous FedAvg on a fleet where a third of the edges are
10x slower (issue: continual learning at the cloud).

    .venv/bin/python bench/async_vs_sync.py [--rounds 30] [--steps 200] \
        [--plot docs/async_vs_sync.png]

Both runs are full `fedmq run`s (embedded broker, real MQTT, digits, MLP, Dirichlet 0.5), on a
fleet of 9 edges: 6 "fast" boards and 3 "slow" ones with a tenth of their compute (emulated:
training takes at least cost / FLOP/s seconds). The sync run does `--rounds` rounds; its final
accuracy is the target. The async run applies every `--buffer-size` updates for up to `--steps`
server steps; we report the wall time (since the first round began) at which it first reaches
the target, against the sync run's total wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROFILE = """
name = "{name}"
description = "bench board: {flops:g} FLOP/s, fast link"
codec = "fp32+zstd"
[device]
ram_bytes = 268435456
flops = {flops:g}
[link]
up_bps = 50000000
down_bps = 50000000
rtt_ms = 2
"""


def run(out: Path, *flags: str) -> list[dict[str, Any]]:
    subprocess.run(
        [sys.executable, "-m", "fedmq.cli.main", "run", "--quiet", "--out", str(out), *flags],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="sync rounds (default 30)")
    ap.add_argument("--steps", type=int, default=200, help="async server steps at most")
    ap.add_argument("--buffer-size", type=int, default=3, help="async K (default 3)")
    ap.add_argument("--max-staleness", type=int, default=30)
    ap.add_argument("--staleness", default="poly:0.5")
    ap.add_argument("--fast-flops", type=float, default=1e8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name, flops in (("fast", args.fast_flops), ("slow", args.fast_flops / 10)):
            (tmp / f"{name}.toml").write_text(PROFILE.format(name=name, flops=flops))
        fleet = f"{tmp / 'fast.toml'}:6,{tmp / 'slow.toml'}:3"
        common = ["--fleet", fleet, "--seed", str(args.seed)]
        sync = run(tmp / "sync", *common, "--rounds", str(args.rounds))
        asyn = run(
            tmp / "async", *common, "--mode", "async", "--rounds", str(args.steps),
            "--buffer-size", str(args.buffer_size), "--max-staleness", str(args.max_staleness),
            "--staleness", args.staleness,
        )  # fmt: skip

    target = sync[-1]["accuracy"]
    sync_wall = sync[-1]["training_elapsed"]
    reached = next((r for r in asyn if r["accuracy"] >= target), None)
    print(f"sync: {args.rounds} rounds, final accuracy {target:.4f}, wall {sync_wall:.1f} s")
    print(
        f"async: {len(asyn)} steps of K={args.buffer_size}, final accuracy "
        f"{asyn[-1]['accuracy']:.4f}, best {max(r['accuracy'] for r in asyn):.4f}, "
        f"wall {asyn[-1]['training_elapsed']:.1f} s"
    )
    counters = asyn[-1]["counters"]
    print(f"async update verdicts (whole run): {counters}")
    if reached is None:
        print(f"async never reached {target:.4f} in {len(asyn)} steps")
    else:
        t = reached["training_elapsed"]
        print(
            f"async reached the sync final accuracy {target:.4f} at step {reached['round']}, "
            f"{t:.1f} s: {t / sync_wall:.2f} of the sync wall time ({sync_wall / t:.1f}x faster)"
        )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for rows, label in ((sync, "sync FedAvg"), (asyn, f"async FedBuff K={args.buffer_size}")):
            ax.plot([r["training_elapsed"] for r in rows], [r["accuracy"] for r in rows],
                    ".-", label=label)  # fmt: skip
        ax.axhline(target, color="gray", ls=":", label=f"sync final {target:.4f}")
        ax.set_xlabel("wall seconds since the first round began")
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(0.5, 1.0)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("6 fast + 3 10x-slower edges: accuracy over wall time")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
