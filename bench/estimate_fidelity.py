"""Estimation fidelity and link-bound efficiency (issue: tinyml_profiles).

    .venv/bin/python bench/estimate_fidelity.py [--rounds 10] [--codecs fp32,fp16,int8,...]
                                                [--fleet esp32s3-wifi:4,pi4-ethernet:4,ltem-modem:2]

For each codec: one `fedmq run` of `--rounds` rounds (10 edges, defaults otherwise), then
fedmq's estimate (made before the run) and the naive W x C x R against the bytes measured at the
edges' sockets, per direction. Then one run of the shaped fleet: each round's time against its
link-limited lower bound. Every run is a fresh process, as a user would start it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


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
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--codecs", default="fp32,fp16,int8,fp32+zstd,fp16+zstd,int8+zstd")
    parser.add_argument("--fleet", default="esp32s3-wifi:4,pi4-ethernet:4,ltem-modem:2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("| codec | dir | measured B | fedmq estimate B | error | naive B | naive error |")
        print("|---|---|---|---|---|---|---|")
        for codec in args.codecs.split(","):
            s = run(Path(tmp) / codec, "--rounds", str(args.rounds), "--codec", codec)
            for way in ("up", "down"):
                print(
                    f"| {codec} | {way} | {s[f'bytes_{way}']:,} | {s[f'estimated_bytes_{way}']:,} "
                    f"| {s[f'estimate_error_{way}_pct']:+.2f}% | {s['naive_bytes']:,} "
                    f"| {s[f'naive_error_{way}_pct']:+.1f}% |",
                    flush=True,
                )
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
