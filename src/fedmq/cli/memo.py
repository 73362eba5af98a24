"""Estimates kept on disk, keyed by everything they are computed from.

An estimate runs the workload ahead in-process, which costs about as much training as the run
itself; it is a pure function of its inputs, so the second `fedmq estimate` of a config (and
the `fedmq run` after it) reads the first one's result instead. The key covers the resolved
config, the device profiles, the host speed, the deadline, torch's thread count and the
versions of torch, numpy and scikit-learn, and a digest of fedmq's own source: any change to
the code that computes an estimate makes a new key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from fedmq.cli.hostspeed import cache_dir
from fedmq.tinyml_profiles.estimator import Estimate

log = logging.getLogger(__name__)

KEEP = 64


@functools.cache
def _source_digest() -> str:
    root = Path(__file__).resolve().parents[1]  # the fedmq package
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".toml") and path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def memo_key(inputs: dict[str, Any]) -> str:
    import numpy
    import sklearn
    import torch

    full = {
        **inputs,
        "versions": [torch.__version__, numpy.__version__, sklearn.__version__],
        "threads": torch.get_num_threads(),
        "source": _source_digest(),
    }
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=repr).encode()).hexdigest()


def _path(key: str, directory: Path | None) -> Path:
    return (directory or cache_dir()) / "estimates" / f"{key[:32]}.json"


def load(key: str, directory: Path | None = None) -> Estimate | None:
    try:
        state = json.loads(_path(key, directory).read_text())
        return Estimate.from_state(state) if state.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(key: str, est: Estimate, directory: Path | None = None) -> None:
    path = _path(key, directory)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**est.state(), "key": key}))
        tmp.replace(path)
        kept = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-KEEP]:  # a bounded cache: the newest KEEP estimates
            old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not keep the estimate in %s: %s", path, exc)
