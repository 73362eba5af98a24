"""Round latency: median round, whole-command wall time, and one round's time budget.

    .venv/bin/python bench/latency.py [--rounds 30] [--out runs/latency] [--no-trace]

Runs, as one subprocess (so the wall time includes Python start-up, imports and the estimate):

    fedmq run --local-epochs 1 --batch-size 32 --lr 0.1 --momentum 0 --rounds 30 \
              --partition dirichlet:0.5          (10 edges, embedded broker)

with the `fedmq.trace` logger on (`fedmq.transport.trace`: a perf_counter stamp per event,
cloud and edges in the one process), and reports from that same run: the median of the
cloud's round time (`rounds.jsonl` `seconds`: round start to summary acknowledged), the wall
time of the whole command, and the median over rounds of each step of a round:

    publish            cloud: round start -> model (full, retained), delta and task acknowledged
                       (issued in order in one window of unacknowledged messages)
    task to edge       round start -> the edge has the task (median over edges)
    queue for a core   edge has the task and the model -> its training starts (2 cores, 10 edges)
    train              one edge's local training (median over edges)
    encode             train end -> update encoded (split_vector)
    uplink             encoded -> the cloud has every chunk, decoded and folded in
    wait for the last  first -> last edge complete at the cloud (the critical path's spread)
    aggregate          last update in -> aggregate + next delta encoded
    evaluate           the held-out set, in a worker thread
    publish summary    -> summary acknowledged
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = [
    "run", "--local-epochs", "1", "--batch-size", "32", "--lr", "0.1", "--momentum", "0",
    "--partition", "dirichlet:0.5",
]  # fmt: skip

# Runs fedmq's own entry point with the trace logger writing one JSON line per event.
WRAPPER = """
import json, logging, sys, time
path = sys.argv[1]
out = open(path, "w")
out.write(json.dumps([time.perf_counter(), "process", "start", 0, time.process_time()]) + "\\n")
class H(logging.Handler):
    def emit(self, record):
        t = getattr(record, "trace", None)
        if t is not None:
            out.write(json.dumps([*t, time.process_time()]) + "\\n")
log = logging.getLogger("fedmq.trace")
log.setLevel(logging.DEBUG)
log.propagate = False
log.addHandler(H())
from fedmq.cli.main import main
code = main(sys.argv[2:])
out.write(json.dumps([time.perf_counter(), "process", "end", 0, time.process_time()]) + "\\n")
out.close()
sys.exit(code)
"""


def budget(events: list[tuple[float, str, str, int, float]], rounds: int) -> dict[str, float]:
    """Median over rounds 2..R (round 1 carries first-use costs) of each step, in seconds."""
    at: dict[tuple[int, str, str], float] = {}
    cpu: dict[tuple[int, str], float] = {}  # the process's CPU seconds at the cloud's events
    for t, node, event, rnd, used in events:
        at.setdefault((rnd, node, event), t)
        if node == "cloud":
            cpu.setdefault((rnd, event), used)
    steps: dict[str, list[float]] = defaultdict(list)
    for rnd in range(2, rounds + 1):
        c = {e: at.get((rnd, "cloud", e)) for e in (
            "round_start", "task_acked", "all_in", "aggregated", "evaluated",
            "summary_acked")}  # fmt: skip
        if any(v is None for v in c.values()):
            continue
        edges = sorted({n for (r, n, _e) in at if r == rnd and n != "cloud"})
        per: dict[str, list[float]] = defaultdict(list)
        ins = []
        for n in edges:
            task_in = at.get((rnd, n, "task_in"))
            ready = max(filter(None, (task_in, at.get((rnd, n, "delta_in")))), default=None)
            t0, t1 = at.get((rnd, n, "train_start")), at.get((rnd, n, "train_end"))
            enc, got = at.get((rnd, n, "encoded")), at.get((rnd, n, "update_in"))
            if None in (task_in, ready, t0, t1, enc, got):
                continue
            assert task_in and ready and t0 and t1 and enc and got
            per["task to edge"].append(task_in - c["round_start"])  # type: ignore[operator]
            per["queue for a core"].append(t0 - ready)
            per["train"].append(t1 - t0)
            per["encode"].append(enc - t1)
            per["uplink"].append(got - enc)
            ins.append(got)
        if not ins:
            continue
        for name, values in per.items():
            steps[name].append(statistics.median(values))
        steps["publish (model, delta, task)"].append(c["task_acked"] - c["round_start"])  # type: ignore[operator]
        steps["first edge in"].append(min(ins) - c["round_start"])  # type: ignore[operator]
        steps["wait for the last"].append(max(ins) - min(ins))
        steps["aggregate"].append(c["aggregated"] - c["all_in"])  # type: ignore[operator]
        steps["evaluate"].append(c["evaluated"] - c["aggregated"])  # type: ignore[operator]
        steps["publish summary"].append(c["summary_acked"] - c["evaluated"])  # type: ignore[operator]
        steps["round (start -> summary acked)"].append(
            c["summary_acked"] - c["round_start"]  # type: ignore[operator]
        )
        # CPU the whole process (broker, cloud, 10 edges) used in the round: beside the wall
        # time it says whether the round waits on something or is CPU-bound on this machine.
        steps["process CPU in the round"].append(
            cpu[(rnd, "summary_acked")] - cpu[(rnd, "round_start")]
        )
    return {name: statistics.median(v) for name, v in steps.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default="runs/latency")
    args = parser.parse_args()
    out = Path(args.out)
    trace = out.with_suffix(".trace.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", WRAPPER, str(trace), *ARGS, "--rounds", str(args.rounds),
           "--out", str(out)]  # fmt: skip
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
        return proc.returncode
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records]
    events = [tuple(json.loads(line)) for line in trace.read_text().splitlines()]
    cpus = os.cpu_count() or 1
    steps = budget(events, args.rounds)
    stamp = {(e[1], e[2], e[3]): e[0] for e in reversed(events)}  # first occurrence wins
    phases = {
        "start-up (interpreter up -> round 1 starts)": stamp[("cloud", "round_start", 1)]
        - stamp[("process", "start", 0)],
        "the rounds": stamp[("cloud", "summary_acked", args.rounds)]
        - stamp[("cloud", "round_start", 1)],
        "after the last round (-> exit)": stamp[("process", "end", 0)]
        - stamp[("cloud", "summary_acked", args.rounds)],
    }
    result = {
        "median_round_s": statistics.median(seconds),
        "max_round_s": max(seconds),
        "wall_s": wall,
        "cpus": cpus,
        "load_before": load_before,
        "final_accuracy": records[-1]["accuracy"],
        "budget_s": steps,
        "phases_s": phases,
    }
    print(f"median round {result['median_round_s'] * 1000:.1f} ms (max {max(seconds) * 1000:.1f}),"
          f" whole command {wall:.2f} s, final accuracy {records[-1]['accuracy']:.4f}"
          f" ({cpus} CPUs, load average {load_before:.2f} before the run)")  # fmt: skip
    print("the whole command (the rest: interpreter start-up and teardown):")
    for name, value in phases.items():
        print(f"  {name:<46} {value:6.2f} s")
    print("time budget of one round (median over rounds 2..R):")
    for name, value in steps.items():
        print(f"  {name:<32} {value * 1000:7.2f} ms")
    (out / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
