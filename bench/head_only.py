"""Head-only (transfer) edges against full-training edges on the CNN (issue: continual learning).

    .venv/bin/python bench/head_only.py [--rounds 10] [--head-only 5]

One `fedmq run` of the digits CNN with 10 edges, the last `--head-only` of which train only the
classifier head (fc2: 650 of 38,282 parameters) and send only its slice. Reported per edge from
the run's summary: uplink bytes at the edge's socket (everything: updates, births, acks) over
the updates it sent, so the per-update figure slightly overstates both kinds alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--head-only", type=int, default=5)
    ap.add_argument("--codec", default="fp32+zstd")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        subprocess.run(
            [sys.executable, "-m", "fedmq.cli.main", "run", "--quiet", "--out", str(out),
             "--model", "cnn", "--rounds", str(args.rounds), "--head-only", str(args.head_only),
             "--codec", args.codec],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())
    per_update = {"all": [], "head": []}
    print("| edge | trains | updates | bytes up | bytes / update |")
    print("|---|---|---:|---:|---:|")
    for e in summary["edges"]:
        b = e["bytes_up"] / max(1, e["updates"])
        per_update[e["train"]].append(b)
        print(f"| {e['id']} | {e['train']} | {e['updates']} | {e['bytes_up']:,} | {b:,.0f} |")
    full, head = statistics.median(per_update["all"]), statistics.median(per_update["head"])
    print(
        f"\nmedian bytes per update: full {full:,.0f}, head-only {head:,.0f}: "
        f"{full / head:.1f}x fewer; final accuracy {summary['final_accuracy']:.4f} "
        f"({args.rounds} rounds, codec {args.codec})"
    )


if __name__ == "__main__":
    main()
