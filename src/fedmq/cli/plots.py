"""PNG plots of a run directory: cumulative bytes (measured, estimated, naive), round time
against its link-limited bound, accuracy over time. `fedmq report RUN_DIR` redraws them from the
files alone. Each figure is built apart from its file, so tests can read its axes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmq.cli.output import link_emulated, step_name, what_was_sent

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# What a step's time spans in each mode (round_seconds of rounds.jsonl).
SPAN = {
    "sync": "model publish to aggregate",
    "async": "last step to the next model out",
    "chain": "first hop out to last hop back",
}
LOG_RATIO = 10.0  # series this far apart in one panel: a linear axis flattens the small ones


def load_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    est_path = run_dir / "estimate.json"
    est = json.loads(est_path.read_text()) if est_path.exists() else {}
    return rows, summary, est


def cumulative(rows: list[dict[str, Any]], key: str, start: float = 0.0) -> np.ndarray:
    return start + np.cumsum([float(r[key]) for r in rows])


def binary_unit(largest: float) -> tuple[str, float]:
    """KiB, MiB or GiB, as the terminal prints them, so a plot and its table agree."""
    for name, size in (("KiB", 1 << 10), ("MiB", 1 << 20)):
        if largest < 1024 * size:
            return name, float(size)
    return "GiB", float(1 << 30)


def needs_log(*series: np.ndarray) -> bool:
    tops = [float(s.max()) for s in series if s.size and s.max() > 0]
    return len(tops) > 1 and max(tops) >= LOG_RATIO * min(tops)


def bytes_figure(
    rows: list[dict[str, Any]], summary: dict[str, Any], est: dict[str, Any]
) -> Figure:
    """Cumulative bytes per direction above, the estimate's error against measured below."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    x = np.array([r["round"] for r in rows])
    step = step_name(summary.get("mode", "sync"))
    sent = dict(zip(("up", "down"), what_was_sent(summary), strict=True))
    fig = Figure(figsize=(11, 6.4))
    grid = fig.subplots(2, 2, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    for col, way in enumerate(("up", "down")):
        top, bottom = grid[0][col], grid[1][col]
        measured = cumulative(rows, f"bytes_{way}")
        setup = float(est.get(f"setup_bytes_{way}", 0))
        estimated = cumulative(rows, f"estimated_bytes_{way}", setup)
        naive = cumulative(rows, "naive_bytes")
        unit, size = binary_unit(max(measured.max(), estimated.max(), naive.max()))
        # Hollow squares over filled dots: the measured line shows even where the estimate
        # lies right on it (a fleet run, within 0.1%).
        top.plot(x, naive / size, ":", label="naive W x C x R", color="gray")
        square, dot = (6, 3) if len(x) > 15 else (9, 4)  # thirty big squares merge into a band
        top.plot(x, estimated / size, "s--", label="fedmq estimate", color="tab:orange",
                 markersize=square, markerfacecolor="none", markeredgewidth=1.5)  # fmt: skip
        top.plot(x, measured / size, "o-", label="measured (sockets)", color="tab:blue",
                 lw=2, markersize=dot)  # fmt: skip
        if needs_log(measured, estimated, naive):
            top.set_yscale("log")
            top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            top.set_ylim(top=top.get_ylim()[1] * 4)  # headroom: the legend sits above the lines
        top.set_title(
            f"{'uplink (edges -> broker)' if way == 'up' else 'downlink (broker -> edges)'}\n"
            + textwrap.fill(sent[way], 64),
            fontsize=9,
        )
        top.set_ylabel(f"cumulative {unit}")
        top.grid(alpha=0.3, which="both")
        top.legend(fontsize=8, loc="upper left")
        error = np.divide(
            100.0 * (estimated - measured), measured, out=np.zeros_like(measured),
            where=measured > 0,
        )  # fmt: skip
        bottom.axhline(0, color="tab:blue", lw=1)
        bottom.plot(x, error, "s--", color="tab:orange", markersize=5)
        # At least +-1%: a 0.02% error must not fill the panel and look like a miss.
        span = max(1.0, float(np.abs(error).max()) * 1.15)
        bottom.set_ylim(-span, span)
        bottom.set_ylabel("estimate error, %")
        bottom.set_xlabel(step)
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.grid(alpha=0.3)
    steps = f"{step}{'es' if step.endswith('s') else 's'}"
    fig.suptitle(
        f"bytes per direction: {summary.get('clients')} edges, "
        f"{summary.get('mode', 'sync')} mode, {len(rows)} {steps}"
    )
    fig.tight_layout()
    return fig


def round_time_figure(rows: list[dict[str, Any]], summary: dict[str, Any]) -> Figure:
    """Measured time per step, beside the link-limited bound only where links were emulated:
    on bare loopback the bound is the host's speed alone, near zero, and says nothing."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    x = [r["round"] for r in rows]
    mode = summary.get("mode", "sync")
    step, span = step_name(mode), SPAN.get(mode, SPAN["sync"])
    fig = Figure(figsize=(7, 4.2))
    ax: Axes = fig.subplots()
    ax.plot(x, [r["round_seconds"] for r in rows], "o-", label=f"measured {step} time", lw=2)
    if link_emulated(summary):
        ax.plot(x, [r["bound_seconds"] for r in rows], "s--", label="link-limited lower bound")
        ax.set_title(f"time per {step} ({span}) vs bound")
    else:
        ax.set_title(f"time per {step} ({span}), no link emulation")
    ax.set_xlabel(step)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def accuracy_figure(rows: list[dict[str, Any]], summary: dict[str, Any]) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax: Axes = fig.subplots()
    times = [float(r.get("training_elapsed") or r["elapsed"]) for r in rows]
    ax.plot(times, [r["accuracy"] for r in rows], "o-", lw=2)
    ax.set_xlabel(f"seconds since the first {step_name(summary.get('mode', 'sync'))} began")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.set_title(f"accuracy over wall time ({summary.get('mode', 'sync')} mode)")
    fig.tight_layout()
    return fig


def write_plots(run_dir: Path) -> list[Path]:
    rows, summary, est = load_run(run_dir)
    if not rows:
        return []
    figures = {
        "bytes.png": bytes_figure(rows, summary, est),
        "round_time.png": round_time_figure(rows, summary),
        "accuracy.png": accuracy_figure(rows, summary),
    }
    paths = []
    for name, fig in figures.items():
        # A bare Figure draws with Agg: no display needed, and no window ever opens.
        fig.savefig(run_dir / name, dpi=110)
        paths.append(run_dir / name)
    return paths
