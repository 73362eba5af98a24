"""The cloud's checkpoint: everything it needs to resume at the right round and version.

One `.npz` file (arrays only, loaded with allow_pickle=False: a checkpoint is data, never code):
the global model, what the edges hold (`view`), the encoded delta not yet published, the server
optimizer's state, in async mode the FedBuff buffer, and a JSON document with the counters, the
sampling RNG's state, the config and the records of finished rounds. Written atomically: a temp
file in the same folder, fsync, rename over the old one, fsync of the folder, so a crash leaves
the old checkpoint or the new one, never half of either.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.errors import ConfigError

FORMAT = 1


@dataclass(frozen=True, eq=False)
class Checkpoint:
    round: int  # the last round whose result is in `flat` (0: none yet)
    version: int
    attempt: int  # how many times the cloud has restarted from a checkpoint of this run
    flat: np.ndarray  # float32 global model
    view: np.ndarray  # float32 model the edges hold once `pending_delta` is applied
    pending_delta: tuple[bytes, ...]  # payloads of the next delta, not yet published
    meta: dict[str, Any]  # JSON: config, rng state, records, counters
    optimizer: Mapping[str, np.ndarray] = field(default_factory=dict)
    buffer: Mapping[str, np.ndarray] = field(default_factory=dict)  # async: FedBuff's state


def save(path: Path, ckpt: Checkpoint) -> None:
    arrays: dict[str, np.ndarray] = {
        "flat": np.asarray(ckpt.flat, dtype=np.float32),
        "view": np.asarray(ckpt.view, dtype=np.float32),
        "delta_bytes": np.frombuffer(b"".join(ckpt.pending_delta), dtype=np.uint8),
        "delta_sizes": np.array([len(p) for p in ckpt.pending_delta], dtype=np.int64),
    }
    for name, value in ckpt.optimizer.items():
        arrays[f"opt.{name}"] = np.asarray(value)
    for name, value in ckpt.buffer.items():
        arrays[f"buf.{name}"] = np.asarray(value)
    head = {"format": FORMAT, "round": ckpt.round, "version": ckpt.version,
            "attempt": ckpt.attempt, "meta": ckpt.meta}  # fmt: skip
    arrays["head"] = np.frombuffer(json.dumps(head).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(buffer.getbuffer())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load(path: Path) -> Checkpoint:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        head = json.loads(arrays.pop("head").tobytes())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"checkpoint {path} is unreadable: {exc}") from exc
    if head.get("format") != FORMAT:
        raise ConfigError(f"checkpoint {path}: format {head.get('format')}, expected {FORMAT}")
    blob = arrays["delta_bytes"].tobytes()
    sizes = [int(n) for n in arrays["delta_sizes"]]
    if sum(sizes) != len(blob):
        raise ConfigError(f"checkpoint {path}: delta sizes do not add up")
    starts = np.cumsum([0, *sizes])
    pending = tuple(blob[starts[i] : starts[i + 1]] for i in range(len(sizes)))
    return Checkpoint(
        round=int(head["round"]),
        version=int(head["version"]),
        attempt=int(head["attempt"]),
        flat=arrays["flat"],
        view=arrays["view"],
        pending_delta=pending,
        meta=head["meta"],
        optimizer={k[4:]: v for k, v in arrays.items() if k.startswith("opt.")},
        buffer={k[4:]: v for k, v in arrays.items() if k.startswith("buf.")},
    )
