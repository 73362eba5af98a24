"""Accuracy against bytes: full digits runs for each uplink codec (issue: compression codecs).

    .venv/bin/python bench/codec_runs.py [--rounds 30] [--plot docs/codec_runs.png]

Baseline "fp32 FedAvg": float32 updates up, the full float32 model down every round
(`--codec fp32 --delta-codec fp32 --downlink-codec fp32`). Every other run uses its uplink codec
with error feedback (lossy codecs) and the default downlink: int8+zstd model deltas. Same seed,
same data, same rounds. Sparse codecs also run 1.5x the rounds, to report the uplink bytes they
spend to reach the baseline's accuracy minus one point ("rounds to the same target").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CODECS = [
    "fp32+zstd",
    "fp16+zstd",
    "int8+zstd",
    "int4+zstd",
    "topk:0.1+int8+zstd",
    "topk:0.01+int8+zstd",
]


def run(out: Path, rounds: int, *flags: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fedmq.cli.main",
            "run",
            "--quiet",
            "--out",
            str(out),
            "--rounds",
            str(rounds),
            *flags,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    return summary, rows


def to_target(rows: list[dict[str, Any]], target: float) -> tuple[int, int] | None:
    """(round, cumulative uplink bytes) when accuracy first reaches target."""
    total = 0
    for r in rows:
        total += r["bytes_up"]
        if r["accuracy"] >= target:
            return r["round"], total
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--plot", help="PNG: final accuracy against total uplink bytes")
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base, base_rows = run(
            Path(tmp) / "base",
            args.rounds,
            "--codec",
            "fp32",
            "--delta-codec",
            "fp32",
            "--downlink-codec",
            "fp32",
        )
        target = base["final_accuracy"] - 0.01
        results["fp32 (baseline)"] = {"summary": base, "to_target": to_target(base_rows, target)}
        for codec in args.codecs.split(","):
            summary, rows = run(Path(tmp) / codec, args.rounds, "--codec", codec)
            entry: dict[str, Any] = {"summary": summary, "to_target": to_target(rows, target)}
            if codec.startswith("topk") and entry["to_target"] is None:
                _, longer = run(Path(tmp) / f"{codec}-long", args.rounds * 3 // 2, "--codec", codec)
                entry["to_target"] = to_target(longer, target)
            results[codec] = entry
            print(f"done {codec}", file=sys.stderr, flush=True)
    up0, down0 = base["bytes_up"], base["bytes_down"]
    hit0 = results["fp32 (baseline)"]["to_target"]
    print(
        f"baseline fp32: accuracy {base['final_accuracy']:.4f}, up {up0:,} B, down {down0:,} B; "
        f"target {target:.4f} reached at round {hit0[0] if hit0 else '-'}"
    )
    print()
    print(
        "| uplink codec | final acc. | vs fp32 (pts) | uplink B | fp32/uplink | downlink B "
        "| fp32/downlink | rounds to target | uplink B to target | fp32/that |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, entry in results.items():
        s = entry["summary"]
        hit = entry["to_target"]
        hit_cols = (
            f"{hit[0]} | {hit[1]:,} | {hit0[1] / hit[1]:.1f}x"
            if hit and hit0
            else "not reached | - | -"
        )
        print(
            f"| {name} | {s['final_accuracy']:.4f} | "
            f"{100 * (s['final_accuracy'] - base['final_accuracy']):+.2f} | {s['bytes_up']:,} | "
            f"{up0 / s['bytes_up']:.2f}x | {s['bytes_down']:,} | {down0 / s['bytes_down']:.1f}x "
            f"| {hit_cols} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for name, entry in results.items():
            s = entry["summary"]
            ax.scatter(s["bytes_up"], s["final_accuracy"], s=40)
            ax.annotate(
                name,
                (s["bytes_up"], s["final_accuracy"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel(f"total uplink bytes, {args.rounds} rounds x 10 edges (log)")
        ax.set_ylabel("final held-out accuracy")
        ax.set_title("digits MLP, FedAvg over MQTT: accuracy against uplink bytes")
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
