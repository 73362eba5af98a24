"""The run plots and summary text read right: scales, binary units, labels per mode, and no
link-limited bound where no profile shaped a link. Figures are read from their axes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from fedmq.cli.output import comparison_table, summary_table, what_was_sent
from fedmq.cli.plots import bytes_figure, round_time_figure, write_plots
from fedmq.cli.rundir import write_json, write_jsonl

pytestmark = pytest.mark.unit


def rows(n: int = 4, *, up: int = 1_300, naive: int = 115_320, bound: float = 0.06) -> list[Any]:
    return [row(r, up, naive, bound) for r in range(1, n + 1)]


def row(r: int, up: int, naive: int, bound: float) -> dict[str, Any]:
    down = 2_900 + (90_000 if r == 1 else 0)  # round 1 brings every edge the full model
    return {"round": r, "version": r, "accuracy": 0.8, "loss": 0.5, "elapsed": float(r),
            "training_elapsed": float(r), "round_seconds": 0.25, "bound_seconds": bound,
            "bytes_up": up, "bytes_down": down, "estimated_bytes_up": up,
            "estimated_bytes_down": down, "naive_bytes": naive}  # fmt: skip


def summary(mode: str = "sync", fleet: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "final_accuracy": 0.9, "rounds": 4, "clients": 3, "wall_seconds": 5.0,
        "bytes_up": 8_000, "bytes_down": 110_000, "estimated_bytes_up": 8_000,
        "estimated_bytes_down": 109_000, "naive_bytes": 461_280,
        "codec": "topk:0.01+int8+zstd", "downlink_codec": "fp32+zstd",
        "delta_codec": "int8+zstd", "model": "mlp", "num_params": 9610,
        "broker": "embedded amqtt", "malformed_messages": 0, "accel": "cpu", "mode": mode,
        "fleet": fleet,
        "edges": [{"id": f"edge-{i}", "profile": "esp32s3-wifi" if fleet else "",
                   "train": "all"} for i in range(3)],
        **extra,
    }  # fmt: skip


def labels(fig: Any) -> list[str]:
    return [t for ax in fig.axes for t in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())]


def test_a_panel_whose_series_differ_10x_is_log_and_a_close_one_linear() -> None:
    # Top-k uplink: 1.3 KiB a round against the naive 113 KiB; downlink within 10x of naive.
    fig = bytes_figure(rows(up=1_300), summary(), {"setup_bytes_down": 90_000})
    up, down = fig.axes[0], fig.axes[1]
    assert up.get_yscale() == "log"
    assert down.get_yscale() == "linear"
    close = bytes_figure(rows(up=40_000, naive=115_320), summary(), {})
    assert close.axes[0].get_yscale() == "linear"


def test_byte_axes_are_binary_units_and_the_downlink_is_labelled() -> None:
    fig = bytes_figure(rows(), summary(), {})
    text = " ".join(labels(fig))
    assert "KiB" in text and " MB" not in text and "MB " not in text
    assert "uplink (edges -> broker)" in fig.axes[0].get_title()
    assert "downlink (broker -> edges)" in fig.axes[1].get_title()
    big = bytes_figure(rows(up=3 << 20, naive=4 << 20), summary(), {})
    assert big.axes[0].get_ylabel() == "cumulative MiB"


def test_measured_stays_visible_over_an_exact_estimate() -> None:
    """A fleet run's estimate lies on the measured line: each has its own marker, and a panel
    under each direction shows the difference."""
    fig = bytes_figure(rows(up=40_000), summary(fleet="esp32s3-wifi:3"), {})
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    measured, estimate = lines["measured (sockets)"], lines["fedmq estimate"]
    assert measured.get_marker() != estimate.get_marker()
    assert estimate.get_markerfacecolor() == "none"  # hollow: the dot inside shows through
    assert len(fig.axes) == 4
    assert fig.axes[2].get_ylabel() == "estimate error, %"


@pytest.mark.parametrize(("mode", "step"), [("sync", "round"), ("async", "server step"),
                                            ("chain", "chain pass")])  # fmt: skip
def test_the_x_axis_names_what_a_step_is_in_each_mode(mode: str, step: str) -> None:
    for fig in (bytes_figure(rows(), summary(mode), {}), round_time_figure(rows(), summary(mode))):
        assert fig.axes[-1].get_xlabel() == step
    if mode != "sync":
        assert not any("round" in t for t in labels(round_time_figure(rows(), summary(mode))))


def test_no_bound_line_without_link_emulation() -> None:
    bare = round_time_figure(rows(), summary())
    assert [line.get_label() for line in bare.axes[0].get_lines()] == ["measured round time"]
    assert "no link emulation" in bare.axes[0].get_title()
    shaped = round_time_figure(rows(bound=1.05), summary(fleet="esp32s3-wifi:3"))
    assert "link-limited lower bound" in [line.get_label() for line in shaped.axes[0].get_lines()]


def test_the_comparison_names_no_bound_on_loopback_and_binary_units() -> None:
    bare, shaped = io.StringIO(), io.StringIO()
    comparison_table(rows(), summary(), bare)
    comparison_table(rows(bound=0.2), summary(fleet="esp32s3-wifi:3"), shaped)
    assert "link-limited bound: median" not in bare.getvalue()
    assert "no link emulation" in bare.getvalue() and "KiB" in bare.getvalue()
    assert "round time / link-limited bound: median 1.25" in shaped.getvalue()


def test_chain_summary_names_the_full_model_per_hop_not_deltas() -> None:
    up, down = what_was_sent(summary("chain", codec="fp32+zstd"))
    assert "full model in fp32+zstd, every hop" in up and "every hop" in down
    assert "delta" not in up + down and "change" not in up + down
    out = io.StringIO()
    summary_table(summary("chain"), "runs/x", out)
    assert "every hop" in out.getvalue() and "delta" not in out.getvalue()


def test_sync_and_async_summaries_name_the_full_model_once_then_changes() -> None:
    up, down = what_was_sent(summary("sync"))
    assert up == "updates in topk:0.01+int8+zstd"
    assert "full model in fp32+zstd once per edge" in down
    assert "every round's change in int8+zstd" in down
    assert "every server step's change" in what_was_sent(summary("async"))[1]


def test_write_plots_draws_every_file_of_a_run_directory(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rounds.jsonl", rows())
    write_json(tmp_path / "summary.json", summary())
    paths = write_plots(tmp_path)
    assert [p.name for p in paths] == ["bytes.png", "round_time.png", "accuracy.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
