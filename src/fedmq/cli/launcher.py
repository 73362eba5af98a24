"""`fedmq run`: an embedded broker, one cloud node and N edge nodes in one process, one event loop.

Each node keeps its own MQTT connection and byte meter, exactly as in separate processes; the
launcher only adds up the edges' meters so the run reports what crossed the edges' sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmq.broker import BrokerConfig, EmbeddedBroker
from fedmq.cli.config import RunConfig
from fedmq.cli.output import what_was_sent
from fedmq.cli.planning import (
    Setup,
    cloud_config,
    keepalive_for,
    make_strategy,
    plan_estimate,
    prepare,
    round_timeout_for,
    run_split,
)
from fedmq.cli.plots import write_plots
from fedmq.cli.rundir import append_jsonl, make_run_dir, save_model, write_json
from fedmq.cloud_node import CloudNode, RoundRecord
from fedmq.edge_node import EdgeConfig, EdgeNode
from fedmq.tinyml_profiles.shaper import LinkShaper
from fedmq.transport import parse_broker_url
from fedmq.workloads import accel_report
from fedmq.workloads.split import save_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundProgress:
    record: RoundRecord
    bytes_up: int  # edges' sockets, this round
    bytes_down: int
    total_up: int
    total_down: int
    elapsed: float
    eta: float


async def run_federated(
    cfg: RunConfig,
    *,
    on_round: Callable[[RoundProgress], None] | None = None,
    setup: Setup | None = None,
) -> tuple[dict[str, Any], Path]:
    """`setup`: `prepare(cfg)` done already (`fedmq run` does it before its banner, so the
    fleet's and the data's refusals come before anything is said to have started)."""
    import torch

    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    setup = setup if setup is not None else prepare(cfg)
    cfg = setup.cfg
    if cfg.save_split:  # before the run: the same work can be rerun even if this one dies
        save_split(cfg.save_split, run_split(setup))
    est = plan_estimate(setup, cfg.round_timeout)
    round_timeout = round_timeout_for(setup, est)
    out = make_run_dir(cfg.out, cfg.job)
    accel = accel_report()
    write_json(
        out / "config.json",
        {
            "run": cfg.as_dict(),
            "accel": accel,
            "fleet": [p.name if p else "" for p in setup.profiles],
            "codecs": setup.codecs,
            "round_timeout": round_timeout,
        },
    )
    write_json(out / "estimate.json", est.as_dict())

    async with contextlib.AsyncExitStack() as stack:
        if cfg.broker:
            url, broker_name = cfg.broker, f"external {cfg.broker}"
        else:
            broker = await stack.enter_async_context(EmbeddedBroker(BrokerConfig(port=0)))
            url, broker_name = broker.url, "embedded amqtt"
        address = parse_broker_url(url)
        edges = []
        slots = asyncio.Semaphore(os.cpu_count() or 1)
        for i, profile in enumerate(setup.profiles):
            edge_url = url
            if profile is not None:
                shaper = LinkShaper(profile.link, address.host, address.port, seed=cfg.seed + i)
                edge_url = (await stack.enter_async_context(shaper)).url
            edges.append(
                EdgeNode(
                    EdgeConfig(
                        broker=edge_url,
                        node_id=setup.edge_id(i),
                        job=cfg.job,
                        shard=i,
                        codec=setup.codecs[i],
                        profile=profile.name if profile else "",
                        compute_flops=profile.flops if profile else 0.0,
                        keepalive=keepalive_for(profile, cfg.max_payload),
                        publish_timeout=max(60.0, round_timeout),
                        train=setup.trains[i],
                    ),
                    data=setup.train.subset(setup.shards[i]),
                    train_slots=slots,
                )
            )
        cloud = CloudNode(
            cloud_config(cfg, url, codec=setup.task_codec, round_timeout=round_timeout),
            strategy=make_strategy(cfg),
        )
        totals = [0, 0]
        measured: list[dict[str, Any]] = []

        def round_done(record: RoundRecord) -> None:
            up = sum(e.meter.sent for e in edges)
            down = sum(e.meter.received for e in edges)
            step_up, step_down = up - totals[0], down - totals[1]
            totals[:] = [up, down]
            elapsed = time.perf_counter() - started
            eta = elapsed / record.round * (cfg.rounds - record.round)
            r_est = est.rounds[record.round - 1]
            row = {
                "round": record.round, "version": record.version, "accuracy": record.accuracy,
                "loss": record.loss, "seconds": record.seconds,
                "round_seconds": record.round_seconds, "bound_seconds": r_est.bound_seconds,
                "elapsed": elapsed, "training_elapsed": record.elapsed,
                "bytes_up": step_up, "bytes_down": step_down,
                "estimated_bytes_up": r_est.bytes_up, "estimated_bytes_down": r_est.bytes_down,
                "naive_bytes": r_est.naive_bytes, "participants": record.participants,
                "selected": record.selected, "quorum_met": record.quorum_met,
                "num_samples": record.num_samples, "counters": record.counters,
                "client_metrics": record.client_metrics, "departed": record.departed,
            }  # fmt: skip
            measured.append(row)
            append_jsonl(out / "rounds.jsonl", row)
            if on_round is not None:
                on_round(RoundProgress(record, step_up, step_down, up, down, elapsed, eta))

        async with asyncio.TaskGroup() as tg:
            edge_tasks = [tg.create_task(e.run(), name=e.config.node_id) for e in edges]
            result = await cloud.run(on_round=round_done)
            # Edges leave on the cloud's stop message; do not let a straggler hold the run.
            _, pending = await asyncio.wait(edge_tasks, timeout=10)
            for task in pending:
                task.cancel()
        totals[:] = [sum(e.meter.sent for e in edges), sum(e.meter.received for e in edges)]

    wall = time.perf_counter() - started
    save_model(
        out / "model.pt",
        result.final_flat,
        result.layout,
        {"version": result.version, "accuracy": result.final_accuracy},
    )
    codecs = sorted(set(setup.codecs))
    summary = {
        "final_accuracy": result.final_accuracy,
        "best_accuracy": max(r.accuracy for r in result.records),
        "rounds": len(result.records),
        "version": result.version,
        "wall_seconds": wall,
        "bytes_up": totals[0],
        "bytes_down": totals[1],
        "cloud_bytes_sent": cloud.meter.sent,
        "cloud_bytes_received": cloud.meter.received,
        "clients": cfg.clients,
        "codec": codecs[0] if len(codecs) == 1 else "mixed: " + ", ".join(codecs),
        "downlink_codec": cfg.downlink_codec,
        "delta_codec": cfg.delta_codec,
        "broker": broker_name,
        "model": cfg.model,
        "num_params": int(result.final_flat.size),
        "partition": cfg.partition,
        "seed": cfg.seed,
        "fleet": cfg.fleet,
        "strategy": cfg.strategy,
        "server_opt": cfg.server_opt,
        "mode": cfg.mode,
        "forged_chunks": result.forged,
        "malformed_messages": result.malformed,
        "stale_chunks": result.stale,
        "accel": accel.get("used", ""),
        "estimated_bytes_up": est.bytes_up,
        "estimated_bytes_down": est.bytes_down,
        "naive_bytes": est.naive_bytes,
        "estimate_error_up_pct": _pct(est.bytes_up, totals[0]),
        "estimate_error_down_pct": _pct(est.bytes_down, totals[1]),
        "naive_error_up_pct": _pct(est.naive_bytes, totals[0]),
        "naive_error_down_pct": _pct(est.naive_bytes, totals[1]),
        "edges": [_edge_summary(e) for e in edges],
        "round_seconds": [r["round_seconds"] for r in measured],
        "round_bound_seconds": [r["bound_seconds"] for r in measured],
    }
    summary["sent_up"], summary["sent_down"] = what_was_sent(summary)
    if cfg.mode == "chain":  # chained hops carry the full model: no delta is ever sent
        del summary["delta_codec"]
    write_json(out / "summary.json", summary)
    write_plots(out)
    return summary, out


def _edge_summary(e: EdgeNode) -> dict[str, Any]:
    """What one edge did and sent, measured at its own socket."""
    cfg = e.config
    return {
        "id": cfg.node_id,
        "train": cfg.train,
        "profile": cfg.profile,
        "codec": cfg.codec,
        "updates": e.updates_sent,
        "bytes_up": e.meter.sent,
        "bytes_down": e.meter.received,
    }


def _pct(estimate: float, measured: float) -> float:
    return 100.0 * (estimate - measured) / measured if measured else float("nan")
