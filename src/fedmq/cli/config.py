"""One frozen run config, resolved from defaults, then a TOML file, then FEDMQ_* env, then flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedmq.codec import MIN_PAYLOAD
from fedmq.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    clients: int = 10  # edge nodes (and data shards)
    rounds: int = 30  # synchronous FedAvg rounds
    local_epochs: int = 5  # passes over local data per round
    batch_size: int = 32
    lr: float = 0.05  # SGD learning rate on the edges (0.1 diverges centralized cnn)
    momentum: float = 0.9  # SGD momentum on the edges (buffer restarts every round)
    model: str = "mlp"  # mlp (64-128-10) or cnn
    dataset: str = "digits"  # scikit-learn's bundled digits: real data, no download
    partition: str = "dirichlet:0.5"  # iid | dirichlet:ALPHA | shards:PER_CLIENT
    fraction: float = 1.0  # share of online edges sampled per round
    min_fit: int = 1  # sample at least this many edges per round
    quorum: float = 0.5  # share of sampled edges that must deliver for a round to count
    seed: int = 0
    codec: str = ""  # uplink codec (`fedmq codecs`); empty: each profile's, else fp32+zstd
    downlink_codec: str = "fp32+zstd"  # the full global model, fetched once by joining edges
    delta_codec: str = "int8+zstd"  # each round's change of the global model, to every edge
    max_payload: int = 128 * 1024  # bytes per MQTT message (managed brokers cap at 128-256 KiB)
    broker: str = ""  # mqtt://host:port of an external broker; empty starts the embedded one
    job: str = "digits"  # topic namespace fedmq/<job>/...
    test_fraction: float = 0.2  # held-out share evaluated at the cloud
    round_timeout: float = 120.0  # seconds the cloud waits for sampled updates
    out: str = ""  # run directory; empty means runs/<time>-<job>
    threads: int = 1  # torch threads per training call (many edges share the cores)
    strategy: str = "fedavg"  # fedavg | median | trimmed_mean | krum | multikrum | normclip
    sample_rounds: int = 3  # rounds the estimator runs ahead in-process to learn codec sizes
    fleet: str = ""  # device profiles, e.g. esp32s3-wifi:4,pi4-ethernet:4 (sets clients)
    server_opt: str = "none"  # none | serversgd | fedavgm | fedadam | fedyogi | fedadagrad
    sparse_server_lr: float = 3.0  # server lr on top-k updates when server_opt is none; 1: off
    server_lr: float = 0.0  # the server optimizer's learning rate; 0: its own default
    prox_mu: float = 0.0  # FedProx proximal term on the edges; 0 is plain local SGD
    mode: str = "sync"  # sync rounds, async (FedBuff: the cloud never waits), or chain
    buffer_size: int = 5  # async: updates per server step (K)
    max_staleness: int = 10  # async: versions an update may lag before it is rejected
    staleness: str = "poly:0.5"  # async: constant | poly:A | hinge:A:B | exp:A
    drift: str = "none"  # edges' data over rounds: none | grow:F | labels:P
    head_only: int = 0  # the last N edges train only the model's head (and send only it)

    def __post_init__(self) -> None:
        if self.clients < 1 or self.rounds < 1:
            raise ConfigError("clients and rounds must be at least 1")
        if self.max_payload < MIN_PAYLOAD:
            raise ConfigError(
                f"max_payload must be at least {MIN_PAYLOAD} bytes (a chunk's header bound plus "
                f"one aligned block), got {self.max_payload}"
            )
        if self.threads < 1:
            raise ConfigError("threads must be at least 1")
        if self.mode not in ("sync", "async", "chain"):
            raise ConfigError(f"mode must be sync, async or chain, got {self.mode!r}")
        if not 0 <= self.head_only <= self.clients and not self.fleet:
            raise ConfigError(f"head_only must be in [0, clients], got {self.head_only}")
        if self.server_lr < 0 or self.prox_mu < 0 or self.sparse_server_lr <= 0:
            raise ConfigError("server_lr and prox_mu must be >= 0, sparse_server_lr > 0")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(RunConfig)}


def _coerce(name: str, value: Any) -> Any:
    kind: type[Any] = type(FIELDS[name].default)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            return str(value).lower() in {"1", "true", "yes", "on"}
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from exc


def _checked(source: str, values: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"{source}: unknown setting {key!r} (known: {', '.join(FIELDS)})")
        out[name] = _coerce(name, value)
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    # Accept a flat file or one with a [run] table.
    table = data.get("run", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [run] must be a table")
    return _checked(str(path), table)


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values = {
        key[len("FEDMQ_") :].lower(): value
        for key, value in env.items()
        if key.startswith("FEDMQ_") and key[len("FEDMQ_") :].lower() in FIELDS
    }
    return _checked("environment", values)


def resolve(
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> RunConfig:
    """Defaults < file < environment (FEDMQ_ROUNDS=5) < flags; flags that are None are unset."""
    merged: dict[str, Any] = {}
    if file:
        merged.update(load_file(file))
    merged.update(from_env(os.environ if env is None else env))
    merged.update(_checked("flags", {k: v for k, v in (flags or {}).items() if v is not None}))
    return RunConfig(**merged)
