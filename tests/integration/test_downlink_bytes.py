"""First-round downlink bytes per edge: the same on every broker, and on a broker used before.

A broker that served an earlier run of the same job still holds that run's final model
retained (it stays for serving nodes). Edges used to subscribe to the full model as soon as they
joined, so on such a broker each edge downloaded the old model and then the new one: about
twice the embedded broker's first-round downlink (issue 11: 775,960 B against 390,110 B).
"""

import json
from pathlib import Path
from typing import Any

import pytest

from fedmq.cli.config import RunConfig
from fedmq.cli.launcher import run_federated

pytestmark = pytest.mark.integration

SMALL: dict[str, Any] = {"clients": 3, "rounds": 1, "local_epochs": 1, "job": "downlink"}


async def first_round_down_per_edge(url: str, out: Path) -> float:
    summary, run_dir = await run_federated(RunConfig(**SMALL, broker=url, out=str(out)))
    assert summary["rounds"] == 1
    first = json.loads((run_dir / "rounds.jsonl").read_text().splitlines()[0])
    assert first["bytes_down"] > SMALL["clients"] * 9610  # each got the model (fp32+zstd)
    return float(first["bytes_down"]) / SMALL["clients"]


async def test_first_round_downlink_is_the_same_on_both_brokers(
    amqtt_url: str, mosquitto_url: str, tmp_path: Path
) -> None:
    embedded = await first_round_down_per_edge(amqtt_url, tmp_path / "amqtt")
    fresh = await first_round_down_per_edge(mosquitto_url, tmp_path / "mosquitto-1")
    # The same job again on the same Mosquitto: it now holds the first run's final model.
    reused = await first_round_down_per_edge(mosquitto_url, tmp_path / "mosquitto-2")
    for measured in (fresh, reused):
        assert abs(measured - embedded) <= 0.02 * embedded, (embedded, fresh, reused)
