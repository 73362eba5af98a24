"""Given data splits and initial weights, so a run can do exactly the work of another framework.

A split file names, by index into the full dataset (in the dataset's own order), the samples of
each edge and of the held-out test set: JSON `{"edges": [[i, ...], ...], "test": [i, ...]}`, or
an `.npz` with arrays `test`, `edge_0`, `edge_1`, ... Initial weights are an `.npz` of arrays
named as the model's parameters (`layout`), read without pickle.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmq.errors import ConfigError
from fedmq.workloads.data import DATASETS, Dataset

MAX_SPLIT_BYTES = 256 << 20  # a split of a dataset fedmq can hold is far smaller


@dataclass(frozen=True, eq=False)  # eq=False: holds numpy arrays
class Split:
    edges: tuple[np.ndarray, ...]  # int64 sample indices of each edge, in file order
    test: np.ndarray  # int64 indices of the held-out test set

    def check(self, num_samples: int, clients: int | None = None) -> None:
        """Disjoint, in range, non-empty; `clients` edges if given. One-line ConfigError."""
        if clients is not None and len(self.edges) != clients:
            raise ConfigError(f"split has {len(self.edges)} edges, the run has {clients}")
        parts = [("test", self.test), *((f"edge {i}", e) for i, e in enumerate(self.edges))]
        seen = np.full(num_samples, -1, dtype=np.int64)
        for k, (name, idx) in enumerate(parts):
            if idx.size == 0:
                raise ConfigError(f"split: {name} has no samples")
            if idx.min() < 0 or idx.max() >= num_samples:
                bad = int(idx[(idx < 0) | (idx >= num_samples)][0])
                raise ConfigError(f"split: {name} has index {bad}, outside [0, {num_samples})")
            if np.unique(idx).size != idx.size:
                raise ConfigError(f"split: {name} lists a sample twice")
            taken = seen[idx] >= 0
            if taken.any():
                other = parts[int(seen[idx][taken][0])][0]
                first = int(idx[taken][0])
                raise ConfigError(f"split: sample {first} is in both {other} and {name}")
            seen[idx] = k


def split_data(dataset: str, path: str | Path, clients: int) -> tuple[list[Dataset], Dataset]:
    """(each edge's data, the test set) of the named dataset as the split file says."""
    loader = DATASETS.get(dataset)
    if loader is None:
        raise ConfigError(f"unknown dataset {dataset!r}")
    full = loader()
    split = load_split(path)
    split.check(len(full), clients)
    return [full.subset(e) for e in split.edges], full.subset(split.test)


def _indices(name: str, value: object) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(f"split: {name} must be a flat list of integer sample indices")
    return arr.astype(np.int64)


def load_split(path: str | Path) -> Split:
    """Read a split file (.json or .npz); `Split.check` validates it against a dataset."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_SPLIT_BYTES:
            raise ConfigError(f"split file {p}: over {MAX_SPLIT_BYTES} bytes")
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            names = sorted((k for k in arrays if k != "test"), key=_edge_number)
            if "test" not in arrays or not names:
                raise ConfigError(f"split file {p}: needs arrays test, edge_0, edge_1, ...")
            edges = [arrays[k] for k in names]
            test: object = arrays["test"]
        else:
            body = json.loads(p.read_text())
            if not isinstance(body, dict) or set(body) != {"edges", "test"}:
                raise ConfigError(
                    f'split file {p}: a JSON object {{"edges": [...], "test": [...]}}'
                )
            edges, test = body["edges"], body["test"]
            if not isinstance(edges, list) or not edges:
                raise ConfigError(f"split file {p}: edges must be a non-empty list of lists")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"split file {p}: {exc}") from exc
    return Split(
        edges=tuple(_indices(f"edge {i}", e) for i, e in enumerate(edges)),
        test=_indices("test", test),
    )


def _edge_number(name: str) -> int:
    head, _, number = name.rpartition("_")
    if head != "edge" or not number.isdigit():
        raise ConfigError(f"split: unexpected array {name!r} (want test, edge_0, edge_1, ...)")
    return int(number)


def save_split(path: str | Path, split: Split) -> None:
    """Write `split` as JSON (or .npz when the name ends so)."""
    p = Path(path)
    if p.suffix == ".npz":
        arrays = {"test": split.test, **{f"edge_{i}": e for i, e in enumerate(split.edges)}}
        np.savez(p, **arrays)  # type: ignore[arg-type]
        return
    body = {"edges": [e.tolist() for e in split.edges], "test": split.test.tolist()}
    p.write_text(json.dumps(body) + "\n")


def load_init_weights(
    path: str | Path, layout: Sequence[tuple[str, tuple[int, ...]]]
) -> np.ndarray:
    """The flat float32 parameter vector from an .npz of arrays named as `layout`'s tensors."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"init weights {p}: {exc}") from exc
    names = [name for name, _ in layout]
    if sorted(arrays) != sorted(names):
        missing = [n for n in names if n not in arrays]
        extra = [n for n in arrays if n not in names]
        raise ConfigError(
            f"init weights {p}: arrays do not match the model (missing {missing}, extra {extra})"
        )
    parts = []
    for name, shape in layout:
        arr = arrays[name]
        if tuple(arr.shape) != tuple(shape):
            raise ConfigError(
                f"init weights {p}: {name} has shape {tuple(arr.shape)}, the model {tuple(shape)}"
            )
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise ConfigError(f"init weights {p}: {name} must hold finite floats")
        parts.append(arr.astype(np.float32).ravel())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
