"""Byzantine edges, in process: 20% of clients send sign-flipped, 10x-scaled updates.

The real workload of `fedmq run` without MQTT: digits, 10 clients, dirichlet:0.5, model mlp, the
default TrainConfig, 30 rounds, every client every round, torch with one thread. Each round every
client trains from the global model and reports delta = trained - global; the attackers (fixed
clients, 2 of 10 by default) send -10 * their honest delta and claim their true sample count.
Deltas go through the same aggregator classes the cloud uses, `add(client, 0, delta,
weight=num_samples)`, and the final model is scored on the held-out set. Each strategy runs
twice from the same seed: clean (nobody attacks) and attacked.

    .venv/bin/python bench/byzantine.py                 # the table in docs/reliability.md
    .venv/bin/python bench/byzantine.py --rounds 5      # a quick check
    .venv/bin/python bench/byzantine.py --json out.json # also the per-round curves
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fedmq.cloud_node import FedAvg, Strategy
from fedmq.cloud_node.robust import Krum, Median, NormClip, RobustAggregator, TrimmedMean
from fedmq.workloads import (
    Dataset,
    PartitionSpec,
    TrainConfig,
    build_model,
    derive_seed,
    evaluate,
    get_flat,
    load_dataset,
    partition,
    train_local,
)

CLIENTS = 10
MODEL = "mlp"
CFG = TrainConfig(local_epochs=5, batch_size=32, lr=0.05, momentum=0.9)


def strategies() -> list[Strategy]:
    return [
        FedAvg(),
        Median(),
        TrimmedMean(trim=0.2),
        Krum(f=2),
        Krum(f=2, multi=CLIENTS - 2, name="multikrum"),
        NormClip(),  # adaptive: the median norm of the round
    ]


@dataclass
class Run:
    strategy: str
    attacked: bool
    accuracy: float = 0.0
    curve: list[float] = field(default_factory=list)  # held-out accuracy after each round
    rejected: int = 0  # deltas the robust aggregator screened out, over all rounds
    seconds: float = 0.0


def simulate(
    strategy: Strategy,
    clients: list[Dataset],
    test: Dataset,
    initial: np.ndarray,
    *,
    attackers: frozenset[int],
    factor: float,
    rounds: int,
    seed: int,
) -> Run:
    run = Run(strategy.name, bool(attackers))
    t0 = time.perf_counter()
    names = [f"edge{k}" for k in range(len(clients))]
    rng = np.random.default_rng(seed)
    flat = initial
    for rnd in range(1, rounds + 1):
        selected = strategy.select(rnd, names, rng)
        agg = strategy.aggregator(rnd, flat)
        for name in selected:
            k = names.index(name)
            res = train_local(MODEL, flat, clients[k], CFG, seed=derive_seed(seed, rnd, k))
            delta = res.flat - flat
            if k in attackers:
                delta = (factor * delta).astype(np.float32)
            agg.add(name, 0, delta, float(res.num_samples))
        flat = agg.result()
        if isinstance(agg, RobustAggregator):
            run.rejected += len(agg.rejected)
        run.curve.append(evaluate(MODEL, flat, test)[1])
    run.accuracy = run.curve[-1]
    run.seconds = time.perf_counter() - t0
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attackers", default="0,1", help="client indices that attack (default 0,1)")
    ap.add_argument("--factor", type=float, default=-10.0, help="attackers send factor * delta")
    ap.add_argument("--json", metavar="PATH", help="also write every run, with its curve")
    args = ap.parse_args()
    torch.set_num_threads(1)
    attackers = frozenset(int(a) for a in args.attackers.split(",") if a)

    train, test = load_dataset("digits", seed=args.seed)
    parts = partition(train.y, CLIENTS, PartitionSpec.parse("dirichlet:0.5"), seed=args.seed)
    clients = [train.subset(p) for p in parts]
    initial = get_flat(
        build_model(
            MODEL,
            num_features=train.num_features,
            num_classes=train.num_classes,
            feature_shape=train.feature_shape,
            seed=args.seed,
        )
    )
    print(
        f"digits, {CLIENTS} clients dirichlet:0.5, {MODEL}, {args.rounds} rounds, seed {args.seed};"
        f" attackers {sorted(attackers)} ({[len(clients[a]) for a in sorted(attackers)]} samples)"
        f" send {args.factor:g} x delta",
        flush=True,
    )
    runs: list[Run] = []
    started = time.perf_counter()
    for strategy in strategies():
        for bad in (frozenset[int](), attackers):
            run = simulate(
                strategy,
                clients,
                test,
                initial,
                attackers=bad,
                factor=args.factor,
                rounds=args.rounds,
                seed=args.seed,
            )
            runs.append(run)
            kind = "attacked" if bad else "clean"
            print(
                f"  {run.strategy:13s} {kind:8s} acc {run.accuracy:.4f}"
                f" rejected {run.rejected:3d} {run.seconds:5.1f}s",
                flush=True,
            )
    by = {(r.strategy, r.attacked): r for r in runs}
    baseline = by[("fedavg", False)].accuracy
    print(f"\ntotal {time.perf_counter() - started:.0f}s\n")
    print("| strategy | clean accuracy | attacked accuracy | difference (points) "
          "| attacked vs clean FedAvg (points) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for strategy in strategies():
        clean, hit = by[(strategy.name, False)], by[(strategy.name, True)]
        print(
            f"| {strategy.name} | {clean.accuracy:.4f} | {hit.accuracy:.4f} |"
            f" {100 * (hit.accuracy - clean.accuracy):+.1f} |"
            f" {100 * (hit.accuracy - baseline):+.1f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"args": vars(args), "runs": [vars(r) for r in runs]}, fh, indent=1, default=list
            )


if __name__ == "__main__":
    main()
