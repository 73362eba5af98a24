"""Reruns `fedmq run` with its defaults a few times and reports medians (issue: foundation).

    .venv/bin/python bench/foundation.py [--repeats 3] [-- extra fedmq run flags]

Each run is a fresh process, as a user would start it; figures come from each run's
summary.json plus the process wall time (imports included). Medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="flags passed to `fedmq run`")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            out = Path(tmp) / f"run{i}"
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "fedmq.cli.main", "run", "--quiet", "--out", str(out),
                 *args.extra],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            process = time.perf_counter() - started
            summary = json.loads((out / "summary.json").read_text())
            summary["process_seconds"] = process
            rows.append(summary)
            print(
                f"run {i}: accuracy {summary['final_accuracy']:.4f}  "
                f"wall {summary['wall_seconds']:.1f} s (process {process:.1f} s)  "
                f"up {summary['bytes_up']:,} B  down {summary['bytes_down']:,} B",
                flush=True,
            )
    s = rows[0]
    raw_update = 4 * s["num_params"]
    naive = raw_update * s["clients"] * s["rounds"]
    med = {k: statistics.median(r[k] for r in rows) for k in
           ("wall_seconds", "process_seconds", "bytes_up", "bytes_down")}  # fmt: skip
    print()
    print(f"model {s['model']} ({s['num_params']:,} params), {s['clients']} edges, "
          f"{s['rounds']} rounds, codec {s['codec']}, broker {s['broker']}")  # fmt: skip
    print(f"final accuracy (all runs): {sorted({r['final_accuracy'] for r in rows})}")
    print(f"median wall_seconds {med['wall_seconds']:.1f}  process {med['process_seconds']:.1f}")
    print(f"median bytes up {med['bytes_up']:,.0f}  down {med['bytes_down']:,.0f}")
    print(f"naive fp32 uplink W x C x R = {naive:,} B; measured/naive = "
          f"{med['bytes_up'] / naive:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
