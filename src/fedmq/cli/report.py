"""`fedmq report RUN_DIR`: the table and plots of a finished run, or the rounds it got through.

A run killed before its end leaves rounds.jsonl but no summary.json, and a `fedmq cloud` run
directory counts bytes at the cloud, not at the edges' sockets: both still get their rounds
listed, in one line each, instead of a traceback from the plots that need what they lack.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fedmq.errors import ConfigError


def report(run_dir: Path) -> int:
    from fedmq.cli.rundir import read_rounds

    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder")
    if not (run_dir / "rounds.jsonl").exists():
        if (run_dir / "config.json").exists():  # written at the start, rounds.jsonl per round
            raise ConfigError(f"{run_dir}: the run stopped before its first round finished")
        raise ConfigError(f"{run_dir} is not a run directory (no rounds.jsonl)")
    try:
        rows = read_rounds(run_dir / "rounds.jsonl")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run_dir}/rounds.jsonl: unreadable ({exc})") from None
    if not (run_dir / "summary.json").exists():
        if not rows:
            raise ConfigError(f"{run_dir}: the run stopped before its first round finished")
        print(f"{run_dir}: interrupted run (no summary.json); {len(rows)} rounds finished:")
        _list(rows)
        print("no plots: they compare against the summary a finished run writes")
        return 0
    if not rows or "bytes_up" not in rows[0]:
        print(f"{run_dir}: {len(rows)} rounds, counted at the cloud (a `fedmq cloud` run):")
        _list(rows)
        print("no plots: they need the bytes at the edges' sockets, which `fedmq run` counts")
        return 0
    from fedmq.cli.output import comparison_table
    from fedmq.cli.plots import load_run, write_plots

    try:
        rows, summary, _ = load_run(run_dir)
    except ValueError as exc:  # JSONDecodeError: a summary cut short
        raise ConfigError(f"{run_dir}: unreadable summary.json or estimate.json ({exc})") from None
    comparison_table(rows, summary, sys.stdout)  # not the stdout of import time
    for path in write_plots(run_dir):
        print(f"wrote {path}")
    return 0


def _list(rows: list[dict[str, Any]]) -> None:
    from fedmq.cli.output import human_bytes

    for r in rows:
        traffic = ""
        if "bytes_up" in r:
            traffic = f"  up {human_bytes(r['bytes_up'])}  down {human_bytes(r['bytes_down'])}"
        elif "cloud_received" in r:
            traffic = f"  in {human_bytes(r['cloud_received'])}  out {human_bytes(r['cloud_sent'])}"
        edges = f"  {len(r['participants'])}/{len(r['selected'])} edges" if "selected" in r else ""
        accuracy = float(r.get("accuracy", float("nan")))
        print(f"  round {r.get('round', '?')}  acc {accuracy:.4f}{traffic}{edges}")
