"""The run directory: resolved config, per-round metrics (JSON lines), final model, summary."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_run_dir(out: str, job: str) -> Path:
    path = Path(out) if out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{job}"
    if path.exists() and any(path.iterdir()):
        # Never overwrite an earlier run's results.
        suffix = 1
        while (candidate := path.with_name(f"{path.name}-{suffix}")).exists():
            suffix += 1
        path = candidate
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: Any) -> None:
    """Atomic: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=_default)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[Any]) -> None:
    """Atomic, like write_json: one JSON document per line."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, default=_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, row: Any) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row, sort_keys=True, default=_default) + "\n")


def save_model(
    path: Path,
    flat: np.ndarray,
    layout: tuple[tuple[str, tuple[int, ...]], ...],
    meta: dict[str, Any],
) -> None:
    """A plain state dict (torch.load(..., weights_only=True) reads it) plus its layout and meta."""
    import torch

    state: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in layout:
        size = int(np.prod(shape)) if shape else 1
        state[name] = torch.from_numpy(flat[offset : offset + size].reshape(shape).copy())
        offset += size
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state, "layout": [list(x) for x in layout], "meta": meta}, tmp)
    os.replace(tmp, path)


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The rows of rounds.jsonl; a last line cut short by a kill is left out, not fatal."""
    rows: list[dict[str, Any]] = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the write the interruption cut off
            raise
        if isinstance(row, dict):
            rows.append(row)
    return rows
