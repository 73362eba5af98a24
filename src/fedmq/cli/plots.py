"""PNG plots of a run directory: cumulative bytes (measured, estimated, naive) and round time
against its link-limited bound. `fedmq report RUN_DIR` redraws them from the files alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def load_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    est_path = run_dir / "estimate.json"
    est = json.loads(est_path.read_text()) if est_path.exists() else {}
    return rows, summary, est


def cumulative(rows: list[dict[str, Any]], key: str, start: float = 0.0) -> np.ndarray:
    return start + np.cumsum([float(r[key]) for r in rows])


def write_plots(run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and no window ever opens
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows, summary, est = load_run(run_dir)
    if not rows:
        return []
    rounds = np.array([r["round"] for r in rows])
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, way in zip(axes, ("up", "down"), strict=True):
        measured = cumulative(rows, f"bytes_{way}")
        setup = float(est.get(f"setup_bytes_{way}", 0))
        estimated = cumulative(rows, f"estimated_bytes_{way}", setup)
        naive = cumulative(rows, "naive_bytes")
        ax.plot(rounds, measured / 1e6, "o-", label="measured (sockets)", lw=2)
        ax.plot(rounds, estimated / 1e6, "s--", label="fedmq estimate")
        ax.plot(rounds, naive / 1e6, ":", label="naive W x C x R", color="gray")
        ax.set_title(f"{'uplink (edges -> broker)' if way == 'up' else 'downlink'}")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("cumulative MB")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"bytes per direction: {summary.get('clients')} edges, codec {summary.get('codec')}"
    )
    fig.tight_layout()
    path = run_dir / "bytes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(rounds, [r["round_seconds"] for r in rows], "o-", label="measured round time", lw=2)
    ax.plot(rounds, [r["bound_seconds"] for r in rows], "s--", label="link-limited lower bound")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("time per round (model publish to aggregate) vs bound")
    fig.tight_layout()
    path = run_dir / "round_time.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    times = [float(r.get("training_elapsed") or r["elapsed"]) for r in rows]
    ax.plot(times, [r["accuracy"] for r in rows], "o-", lw=2)
    ax.set_xlabel("seconds since the first round began")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.set_title(f"accuracy over wall time ({summary.get('mode', 'sync')} mode)")
    fig.tight_layout()
    path = run_dir / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths
