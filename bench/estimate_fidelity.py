"""Estimation fidelity per mode and codec, and link-bound efficiency (issue: tinyml_profiles).

    .venv/bin/python bench/estimate_fidelity.py [--clients 10] [--rounds 10] [--local-epochs 5]
        [--runs "sync fp32+zstd,async fp32+zstd,..."] [--fleet esp32s3-wifi:4,...|none]

For each named run (RUNS below: every mode, every codec family): one `fedmq run`, then fedmq's
estimate (made before the run) and the naive W x C x R against the bytes measured at the edges'
sockets, per direction; for async runs also the updates sent against the estimate's count.
Then one run of the shaped fleet: each round's time against its link-limited lower bound.
Every run is a fresh process, as a user would start it; the host speed comes from the cache
(`fedmq estimate` says where), so estimates do not depend on the moment.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RUNS: dict[str, tuple[str, ...]] = {
    "sync fp32+zstd": ("--codec", "fp32+zstd"),
    "sync fp16": ("--codec", "fp16"),
    "sync int8+zstd": ("--codec", "int8+zstd"),
    "sync int4": ("--codec", "int4"),
    "sync sign": ("--codec", "sign"),
    "sync topk:0.01+int8+zstd": ("--codec", "topk:0.01+int8+zstd"),
    "sync head-only (half)": ("--codec", "fp32+zstd", "--head-only", "HALF"),
    "async fp32+zstd K=edges": ("--mode", "async", "--buffer-size", "EDGES"),
    "async fp32+zstd K=5": ("--mode", "async", "--buffer-size", "5"),
    "async topk:0.01+int8+zstd K=edges": ("--mode", "async", "--buffer-size", "EDGES",
                                          "--codec", "topk:0.01+int8+zstd"),
    "chain fp32+zstd": ("--mode", "chain"),
}  # fmt: skip


def run(out: Path, *flags: str) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, "-m", "fedmq.cli.main", "run", "--quiet", "--out", str(out), *flags],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--runs", default=",".join(RUNS), help="names from RUNS, comma-separated")
    parser.add_argument("--fleet", default="esp32s3-wifi:4,pi4-ethernet:4,ltem-modem:2")
    args = parser.parse_args()
    brief = ("--clients", str(args.clients), "--rounds", str(args.rounds),
             "--local-epochs", str(args.local_epochs))  # fmt: skip
    subs = {"EDGES": str(args.clients), "HALF": str(args.clients // 2)}
    with tempfile.TemporaryDirectory() as tmp:
        print("| run | dir | measured B | fedmq estimate B | error | naive B | naive error |")
        print("|---|---|---|---|---|---|---|")
        for i, name in enumerate(args.runs.split(",")):
            flags = [subs.get(f, f) for f in RUNS[name]]
            s = run(Path(tmp) / str(i), *brief, *flags)
            for way in ("up", "down"):
                print(
                    f"| {name} | {way} | {s[f'bytes_{way}']:,} | {s[f'estimated_bytes_{way}']:,} "
                    f"| {s[f'estimate_error_{way}_pct']:+.2f}% | {s['naive_bytes']:,} "
                    f"| {s[f'naive_error_{way}_pct']:+.1f}% |",
                    flush=True,
                )
            if s["mode"] == "async":
                k = min(int(flags[flags.index("--buffer-size") + 1]), args.clients)
                sent = sum(e["updates"] for e in s["edges"])
                print(f"|   | {sent} updates sent; estimated {s['rounds'] * k + s['clients']} "
                      f"(K x steps + one in flight per edge) |  |  |  |  |  |")  # fmt: skip
        if args.fleet == "none":
            return
        fleet = Path(tmp) / "fleet"
        s = run(fleet, "--rounds", str(args.rounds), "--fleet", args.fleet)
        ratios = [t / b for t, b in zip(s["round_seconds"], s["round_bound_seconds"], strict=True)]
        print(f"\nfleet {args.fleet}, {args.rounds} rounds, codecs {s['codec']}:")
        print(
            f"  bytes up: measured {s['bytes_up']:,}, estimate error "
            f"{s['estimate_error_up_pct']:+.2f}%; down: measured {s['bytes_down']:,}, "
            f"estimate error {s['estimate_error_down_pct']:+.2f}%"
        )
        print(
            "  round time / link-limited bound per round: " + ", ".join(f"{r:.3f}" for r in ratios)
        )
        print(
            f"  median {sorted(ratios)[len(ratios) // 2]:.3f}, max {max(ratios):.3f} "
            f"(acceptance: every round <= 1.15); bound per round "
            f"{s['round_bound_seconds'][0]:.3f} s; final accuracy {s['final_accuracy']:.4f}"
        )


if __name__ == "__main__":
    main()
