"""Asynchronous (FedBuff) against synchronous FedAvg on a fleet where a third of the edges are
10x slower (issue: continual learning at the cloud).

    .venv/bin/python bench/async_vs_sync.py [--rounds 30] [--steps 200] [--seeds 0,1,2] \
        [--plot docs/async_vs_sync.png]

Both runs are full `fedmq run`s (embedded broker, real MQTT, digits, MLP, Dirichlet 0.5), on a
fleet of 9 edges: 6 "fast" boards and 3 "slow" ones with a tenth of their compute (emulated:
training takes at least cost / FLOP/s seconds). The sync run does `--rounds` rounds; its final
accuracy level is the target. The async run applies every `--buffer-size` updates for up to
`--steps` server steps.

Both curves are noisy (async moves once per buffer of K updates), so neither "first touch" of a
single point is used: a run has reached a level at the first time after which its trailing
5-step moving average never again drops below it (`sustained`). Two levels, per seed: the sync
run's own final level (the mean of its last 5 rounds), and one point below it. For each, async's
sustained time against the sync run's sustained time at the same level (and against its total
wall time); the figure is the median and range over `--seeds`. `--json` keeps every curve.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

WINDOW = 5  # steps in the moving average; the target is the sync run's last WINDOW rounds

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


def moving_average(values: Sequence[float], window: int = WINDOW) -> list[float]:
    """Trailing means; the first window - 1 entries average what exists so far."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def sustained(rows: Sequence[dict[str, Any]], target: float, window: int = WINDOW) -> int | None:
    """Index of the first row after which the trailing moving average of accuracy stays at or
    above `target` to the end of the run; None if it ends below (or never gets there)."""
    ma = moving_average([r["accuracy"] for r in rows], window)
    hit = None
    for i, a in enumerate(ma):
        if i < window - 1:
            continue  # a mean of fewer than `window` points is not a sustained level
        hit = (i if hit is None else hit) if a >= target - 1e-12 else None
    return hit


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name, flops in (("fast", args.fast_flops), ("slow", args.fast_flops / 10)):
            (tmp / f"{name}.toml").write_text(PROFILE.format(name=name, flops=flops))
        fleet = f"{tmp / 'fast.toml'}:6,{tmp / 'slow.toml'}:3"
        common = ["--fleet", fleet, "--seed", str(seed)]
        sync = run(tmp / "sync", *common, "--rounds", str(args.rounds))
        asyn = run(
            tmp / "async", *common, "--mode", "async", "--rounds", str(args.steps),
            "--buffer-size", str(args.buffer_size), "--max-staleness", str(args.max_staleness),
            "--staleness", args.staleness,
        )  # fmt: skip
    level = sum(r["accuracy"] for r in sync[-WINDOW:]) / WINDOW
    sync_wall = sync[-1]["training_elapsed"]
    print(
        f"seed {seed}: sync {args.rounds} rounds, final {sync[-1]['accuracy']:.4f}, last-"
        f"{WINDOW} mean {level:.4f}, wall {sync_wall:.1f} s | async {len(asyn)} steps, final "
        f"{asyn[-1]['accuracy']:.4f}, last-{WINDOW} mean "
        f"{sum(r['accuracy'] for r in asyn[-WINDOW:]) / WINDOW:.4f}, wall "
        f"{asyn[-1]['training_elapsed']:.1f} s, verdicts {asyn[-1]['counters']}",
        flush=True,
    )
    out: dict[str, Any] = {"seed": seed, "sync": sync, "async": asyn, "sync_wall": sync_wall}
    for key, target in (("level", level), ("level-1pt", level - 0.01)):
        times = []
        for rows in (sync, asyn):
            hit = sustained(rows, target)
            times.append(None if hit is None else rows[hit]["training_elapsed"])
        ts, ta = times
        out[key] = {"target": target, "sync_time": ts, "async_time": ta}
        ratio = None if ts is None or ta is None else ta / ts
        out[key]["ratio"] = ratio
        print(
            f"  {key} {target:.4f}: sync sustained from {_s(ts)}, async from {_s(ta)}"
            + ("" if ratio is None else f": {ratio:.2f} of sync's time")
            + ("" if ta is None else f", {ta / sync_wall:.2f} of sync's wall"),
            flush=True,
        )
    return out


def _s(t: float | None) -> str:
    return "never" if t is None else f"{t:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="sync rounds (default 30)")
    ap.add_argument("--steps", type=int, default=200, help="async server steps at most")
    ap.add_argument("--buffer-size", type=int, default=3, help="async K (default 3)")
    ap.add_argument("--max-staleness", type=int, default=30)
    ap.add_argument("--staleness", default="poly:0.5")
    ap.add_argument("--fast-flops", type=float, default=1e8)
    ap.add_argument("--seeds", default="0,1,2", help="comma list (default 0,1,2)")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write every run's curve here")
    args = ap.parse_args()
    seeds = [int(v) for v in args.seeds.split(",")]
    runs = [one_seed(args, seed) for seed in seeds]
    if args.json:
        args.json.write_text(json.dumps(runs))
    for key in ("level", "level-1pt"):
        ratios = [r[key]["ratio"] for r in runs]
        got = [x for x in ratios if x is not None]
        shown = ", ".join("-" if x is None else f"{x:.2f}" for x in ratios)
        if got:
            print(
                f"{key}: async sustained it in {median(got):.2f} of sync's time (median of "
                f"{len(got)} of {len(runs)} seeds; range {min(got):.2f}-{max(got):.2f}: {shown})"
            )
        else:
            print(f"{key}: async never sustained it ({shown})")
    sync, asyn = runs[0]["sync"], runs[0]["async"]
    target = runs[0]["level-1pt"]["target"]
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for rows, label in ((sync, "sync FedAvg"), (asyn, f"async FedBuff K={args.buffer_size}")):
            xs = [r["training_elapsed"] for r in rows]
            (line,) = ax.plot(xs, [r["accuracy"] for r in rows], ".", alpha=0.35)
            ax.plot(xs, moving_average([r["accuracy"] for r in rows]), "-",
                    color=line.get_color(), label=f"{label} ({WINDOW}-step mean)")  # fmt: skip
        ax.axhline(target, color="gray", ls=":", label=f"sync level - 1 pt {target:.4f}")
        ax.set_xlabel("wall seconds since the first round began")
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(0.5, 1.0)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"6 fast + 3 10x-slower edges, seed {runs[0]['seed']}: accuracy over time")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
