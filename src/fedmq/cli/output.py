"""Human output of the CLI: progress lines per round and the closing summary table."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # only a type here: plots import this module, and the launcher imports plots
    from fedmq.cli.launcher import RoundProgress


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def step_name(mode: str) -> str:
    """What one line of rounds.jsonl is in each mode."""
    return {"async": "server step", "chain": "chain pass"}.get(mode, "round")


def departed_note(departed: tuple[str, ...] | list[str]) -> str:
    """`  (left: edge-2, edge-7)` for a progress line: edges that went offline mid-round."""
    if not departed:
        return ""
    shown = ", ".join(departed[:5]) + (f" +{len(departed) - 5} more" if len(departed) > 5 else "")
    return f"  (left: {shown})"


def link_emulated(summary: dict[str, Any]) -> bool:
    """Whether any edge's link went through a profile's shaper. Without one, the link-limited
    bound is only the host's own speed: a figure near zero that nothing should be held to."""
    return bool(summary.get("fleet")) or any(e.get("profile") for e in summary.get("edges", []))


def what_was_sent(summary: dict[str, Any]) -> tuple[str, str]:
    """(up, down) as the edges' sockets saw them, from the mode and the codecs the run used.

    Chained edges hand the whole trained model on in the full-model codec and no delta goes
    anywhere; in sync and async mode updates go up, and the model comes down in full once (to
    an edge that joins or falls behind), then as each step's change against what edges hold."""
    mode = summary.get("mode", "sync")
    full = summary.get("downlink_codec", "?")
    if mode == "chain":
        return (
            f"the trained full model in {full}, every hop (to the next edge or the cloud)",
            f"the full model in {full}, every hop (from the cloud or the edge before)",
        )
    codec = str(summary.get("codec", "?"))
    codec = codec.replace("mixed: ", "each edge's own: ")  # a fleet's profiles choose
    heads = sum(e.get("train") == "head" for e in summary.get("edges", []))
    only = f" ({heads} edges: the head only)" if heads and mode == "sync" else ""
    return (
        f"updates in {codec}{only}",
        f"the full model in {full} once per edge (joining or behind), then every "
        f"{step_name(mode)}'s change in {summary.get('delta_codec', '?')}",
    )


class Progress:
    def __init__(self, rounds: int, stream: TextIO | None = None, *, mode: str = "sync") -> None:
        self.rounds = rounds
        self.stream = stream or sys.stdout  # looked up per call: callers may swap sys.stdout
        self.width = len(str(rounds))
        self.step = step_name(mode)

    def header(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __call__(self, p: RoundProgress) -> None:
        r = p.record
        flag = "" if r.quorum_met else "  (quorum not met: model kept)"
        flag += departed_note(r.departed)
        print(
            f"{self.step} {r.round:>{self.width}}/{self.rounds}  acc {r.accuracy:.4f}  "
            f"up {human_bytes(p.bytes_up):>10}  down {human_bytes(p.bytes_down):>10}  "
            f"{len(r.participants)}/{len(r.selected)} edges  "
            f"elapsed {p.elapsed:6.1f}s  eta {p.eta:6.1f}s{flag}",
            file=self.stream,
            flush=True,
        )


def summary_table(summary: dict[str, Any], out: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    rows = [
        ("final accuracy", f"{summary['final_accuracy']:.4f}"),
        ("rounds", str(summary["rounds"])),
        ("clients", str(summary["clients"])),
        ("wall time", f"{summary['wall_seconds']:.1f} s"),
        ("bytes up (edges)", f"{summary['bytes_up']:,} B ({human_bytes(summary['bytes_up'])})"),
        ("bytes down (edges)",
         f"{summary['bytes_down']:,} B ({human_bytes(summary['bytes_down'])})"),
        ("sent up", what_was_sent(summary)[0]),
        ("sent down", what_was_sent(summary)[1]),
        ("model", f"{summary['model']} ({summary['num_params']:,} parameters)"),
        ("broker", summary["broker"]),
        ("rejected messages", str(summary["malformed_messages"])),
        ("compute path", summary.get("accel", "")),
        ("run directory", out),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print("", file=stream)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", file=stream)
    print("", file=stream, flush=True)


def comparison_table(
    rows: list[dict[str, Any]], summary: dict[str, Any], stream: TextIO | None = None
) -> None:
    """Measured against fedmq's estimate and the naive W x C x R, per direction, and time."""
    stream = stream or sys.stdout
    if "estimated_bytes_up" not in summary:
        return
    print("  traffic      measured       fedmq estimate (error)    naive W x C x R (error)",
          file=stream)  # fmt: skip
    for way in ("up", "down"):
        measured = summary[f"bytes_{way}"]
        est = summary[f"estimated_bytes_{way}"]
        naive = summary["naive_bytes"]
        e_est, e_naive = _err(est, measured), _err(naive, measured)
        print(
            f"  {way:<6} {human_bytes(measured):>14} {human_bytes(est):>14} ({e_est:>+6.1f}%) "
            f"{human_bytes(naive):>14} ({e_naive:>+6.1f}%)",
            file=stream,
        )
    step = step_name(summary.get("mode", "sync"))
    if rows and not link_emulated(summary):
        seconds = sorted(r["round_seconds"] for r in rows)
        print(f"  {step} time: median {seconds[len(seconds) // 2]:.2f} s, max {seconds[-1]:.2f} s "
              "(no link emulation: no link-limited bound)", file=stream)  # fmt: skip
    elif rows:
        ratios = [r["round_seconds"] / r["bound_seconds"] for r in rows if r["bound_seconds"] > 0]
        if ratios:
            median = sorted(ratios)[len(ratios) // 2]
            print(
                f"  {step} time / link-limited bound: median {median:.2f}, max {max(ratios):.2f}",
                file=stream,
            )
    print("", file=stream, flush=True)


def _err(estimate: float, measured: float) -> float:
    return 100.0 * (estimate - measured) / measured if measured else float("nan")
