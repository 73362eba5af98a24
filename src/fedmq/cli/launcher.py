"""`fedmq run`: an embedded broker, one cloud node and N edge nodes in one process, one event loop.

Each node keeps its own MQTT connection and byte meter, exactly as in separate processes; the
launcher only adds up the edges' meters so the run reports what crossed the edges' sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedmq.broker import BrokerConfig, EmbeddedBroker
from fedmq.cli.config import FIELDS, RunConfig
from fedmq.cli.rundir import append_jsonl, make_run_dir, save_model, write_json
from fedmq.cloud_node import CloudConfig, CloudNode, RoundRecord
from fedmq.edge_node import EdgeConfig, EdgeNode
from fedmq.workloads import PartitionSpec, accel_report, load_dataset, partition

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


def cloud_config(cfg: RunConfig, broker: str, **overrides: Any) -> CloudConfig:
    """The cloud's config: every setting it shares with the run config, plus `overrides`."""
    shared = {
        f.name: getattr(cfg, f.name)
        for f in fields(CloudConfig)
        if f.name in FIELDS and f.name != "broker"
    }
    return CloudConfig(broker=broker, **{**shared, **overrides})


async def run_federated(
    cfg: RunConfig, *, on_round: Callable[[RoundProgress], None] | None = None
) -> tuple[dict[str, Any], Path]:
    import torch

    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    out = make_run_dir(cfg.out, cfg.job)
    accel = accel_report()
    write_json(out / "config.json", {"run": cfg.as_dict(), "accel": accel})
    train, _ = load_dataset(cfg.dataset, seed=cfg.seed, test_fraction=cfg.test_fraction)
    shards = partition(train.y, cfg.clients, PartitionSpec.parse(cfg.partition), seed=cfg.seed)

    async with contextlib.AsyncExitStack() as stack:
        if cfg.broker:
            url, broker_name = cfg.broker, f"external {cfg.broker}"
        else:
            broker = await stack.enter_async_context(EmbeddedBroker(BrokerConfig(port=0)))
            url, broker_name = broker.url, "embedded amqtt"
        edges = [
            EdgeNode(
                EdgeConfig(broker=url, node_id=f"edge-{i}", job=cfg.job, shard=i),
                data=train.subset(shards[i]),
            )
            for i in range(cfg.clients)
        ]
        cloud = CloudNode(cloud_config(cfg, url))
        totals = [0, 0]

        def round_done(record: RoundRecord) -> None:
            up = sum(e.meter.sent for e in edges)
            down = sum(e.meter.received for e in edges)
            step_up, step_down = up - totals[0], down - totals[1]
            totals[:] = [up, down]
            elapsed = time.perf_counter() - started
            eta = elapsed / record.round * (cfg.rounds - record.round)
            row = {
                "round": record.round, "version": record.version, "accuracy": record.accuracy,
                "loss": record.loss, "seconds": record.seconds, "elapsed": elapsed,
                "bytes_up": step_up, "bytes_down": step_down, "participants": record.participants,
                "selected": record.selected, "quorum_met": record.quorum_met,
                "num_samples": record.num_samples, "counters": record.counters,
                "client_metrics": record.client_metrics,
            }  # fmt: skip
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

    wall = time.perf_counter() - started
    save_model(
        out / "model.pt",
        result.final_flat,
        result.layout,
        {"version": result.version, "accuracy": result.final_accuracy},
    )
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
        "codec": cfg.codec,
        "downlink_codec": cfg.downlink_codec,
        "broker": broker_name,
        "model": cfg.model,
        "num_params": int(result.final_flat.size),
        "partition": cfg.partition,
        "seed": cfg.seed,
        "malformed_messages": result.malformed,
        "stale_chunks": result.stale,
        "accel": accel.get("used", ""),
    }
    write_json(out / "summary.json", summary)
    return summary, out
