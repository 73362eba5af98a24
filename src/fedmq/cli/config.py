"""One frozen run config, resolved from defaults, then a TOML file, then FEDMQ_* env, then flags."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedmq.codec import MIN_PAYLOAD
from fedmq.errors import ConfigError

# Names cli.planning builds; checked here so a typo fails before torch is imported.
STRATEGIES = ("fedavg", "median", "trimmed_mean", "krum", "multikrum", "normclip")
SERVER_OPTS = ("none", "serversgd", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
# FEDMQ_* variables that are not run settings.
OTHER_ENV = ("FEDMQ_PASSWORD",)


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
    server_lr: float = 0.0  # the server optimizer's learning rate; 0: its own default
    prox_mu: float = 0.0  # FedProx proximal term on the edges; 0 is plain local SGD
    mode: str = "sync"  # sync rounds, async (FedBuff: the cloud never waits), or chain
    buffer_size: int = 5  # async: updates per server step (K)
    max_staleness: int = 10  # async: versions an update may lag before it is rejected
    staleness: str = "poly:0.5"  # async: constant | poly:A | hinge:A:B | exp:A
    drift: str = "none"  # edges' data over rounds: none | grow:F | labels:P
    head_only: int = 0  # the last N edges train only the model's head (and send only it)
    split: str = ""  # split file (JSON or .npz of sample indices per edge and the test set)
    init_weights: str = ""  # .npz of the model's named arrays: the initial global model
    save_split: str = ""  # write the split this run uses (fedmq's own or --split's) here

    def __post_init__(self) -> None:
        for message in self._problems():
            raise ConfigError(message)

    def _problems(self) -> list[str]:
        """Every range a setting must lie in, as the flag a user would fix."""

        def outside(ok: bool, flag: str, bounds: str, value: float) -> list[str]:
            return [] if ok else [f"--{flag} must be {bounds}, got {value:g}"]

        return [
            *outside(self.clients >= 1, "clients", "at least 1", self.clients),
            *outside(self.rounds >= 1, "rounds", "at least 1", self.rounds),
            *outside(self.local_epochs >= 1, "local-epochs", "at least 1", self.local_epochs),
            *outside(self.batch_size >= 1, "batch-size", "at least 1", self.batch_size),
            *outside(math.isfinite(self.lr) and self.lr > 0, "lr", "> 0", self.lr),
            *outside(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum),
            *outside(0 < self.fraction <= 1, "fraction", "in (0, 1]", self.fraction),
            *outside(self.min_fit >= 1, "min-fit", "at least 1", self.min_fit),
            # A fleet sets the clients later; cli.checks holds min_fit to its size.
            *outside(bool(self.fleet) or self.min_fit <= self.clients, "min-fit",
                     f"at most --clients ({self.clients})", self.min_fit),
            *outside(0 < self.quorum <= 1, "quorum", "in (0, 1]", self.quorum),
            *outside(self.seed >= 0, "seed", ">= 0", self.seed),
            *outside(0 < self.test_fraction < 1, "test-fraction", "in (0, 1)",
                     self.test_fraction),
            *outside(self.round_timeout > 0, "round-timeout", "> 0", self.round_timeout),
            *outside(self.sample_rounds >= 1, "sample-rounds", "at least 1", self.sample_rounds),
            *outside(self.buffer_size >= 1, "buffer-size", "at least 1", self.buffer_size),
            *outside(self.max_staleness >= 0, "max-staleness", ">= 0", self.max_staleness),
            *(
                []
                if self.max_payload >= MIN_PAYLOAD
                else [f"max_payload must be at least {MIN_PAYLOAD} bytes (a chunk's header "
                      f"bound plus one aligned block), got {self.max_payload}"]
            ),
            *outside(self.threads >= 1, "threads", "at least 1", self.threads),
            *([] if self.mode in ("sync", "async", "chain")
              else [f"--mode must be sync, async or chain, got {self.mode!r}"]),
            *([] if self.fleet or 0 <= self.head_only <= self.clients
              else [f"--head-only must be in [0, --clients], got {self.head_only}"]),
            *outside(self.server_lr >= 0, "server-lr", ">= 0", self.server_lr),
            *outside(self.prox_mu >= 0, "prox-mu", ">= 0", self.prox_mu),
            *([] if self.strategy in STRATEGIES
              else [f"--strategy {self.strategy!r}: choose from {', '.join(STRATEGIES)}"]),
            *([] if self.server_opt in SERVER_OPTS
              else [f"--server-opt {self.server_opt!r}: choose from {', '.join(SERVER_OPTS)}"]),
        ]  # fmt: skip

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


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """A warning for each FEDMQ_* variable fedmq does not read, naming the closest real one."""
    known = [f"FEDMQ_{name.upper()}" for name in FIELDS] + list(OTHER_ENV)
    warnings = []
    for key in sorted(env):
        if key.startswith("FEDMQ_") and key not in known:
            # Matched without the shared prefix, which would make every name look close.
            names = {k[len("FEDMQ_") :]: k for k in known}
            close = difflib.get_close_matches(key[len("FEDMQ_") :], names, n=1, cutoff=0.6)
            hint = f" (did you mean {names[close[0]]}?)" if close else ""
            warnings.append(f"{key} is not a fedmq setting; ignored{hint}")
    return warnings


def resolve(
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> RunConfig:
    """Defaults < file < environment (FEDMQ_ROUNDS=5) < flags; flags that are None are unset."""
    in_file = load_file(file) if file else {}
    in_env = from_env(os.environ if env is None else env)
    given = _checked("flags", {k: v for k, v in (flags or {}).items() if v is not None})
    merged = {**in_file, **in_env, **given}
    # Where each value came from, for the error that names it (a flag: the user just typed it).
    source = {
        **dict.fromkeys(in_file, str(file)),
        **{name: f"FEDMQ_{name.upper()}" for name in in_env},
        **dict.fromkeys(given, ""),
    }
    try:
        return RunConfig(**merged)
    except ConfigError as exc:
        # "--seed must be >= 0" puzzles a user who never typed --seed: say where it was set.
        message = str(exc)
        for name, origin in source.items():
            if origin and message.startswith(f"--{name.replace('_', '-')} "):
                message += f" (set by {origin})"
                break
        raise ConfigError(message) from None
