"""How peer frameworks put a model update on the wire, reproduced for `bench/codecs.py`.

Each peer encodes the update as its framework holds it (a state dict of tensors, a list of
ndarrays) and decodes it back to the same; neither adds chunking or an envelope.

- FedML: `pickle.dumps(model_params)` of the state dict (`fedml/core/distributed/communication/
  s3/remote_storage.py`, `write_model`), here also gzip-compressed as the issue describes
  (Python's `gzip.compress`, default level 9).
- Flower: `ndarrays_to_parameters` turns each ndarray into the bytes of `np.save(BytesIO,
  arr, allow_pickle=False)` (`flwr/common/parameter.py`, `ndarray_to_bytes`) and sends the list;
  its size is the sum of those byte strings. Decoding is `np.load(BytesIO(b), allow_pickle=False)`.
- fp32 + zstd: the raw float32 bytes compressed by zstd level 3, no byte shuffle.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import zstandard

Layout = Sequence[tuple[str, tuple[int, ...]]]


def to_arrays(flat: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """The flat vector as one array per tensor, in layout order (views, no copy)."""
    out, start = [], 0
    for _, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return out


def to_state_dict(flat: np.ndarray, layout: Layout) -> OrderedDict[str, torch.Tensor]:
    """A PyTorch state dict holding the update, as FedML's trainer returns it."""
    arrays = to_arrays(flat, layout)
    pairs = zip(layout, arrays, strict=True)
    return OrderedDict((name, torch.from_numpy(a.copy())) for (name, _), a in pairs)


def flatten(parts: Sequence[np.ndarray] | Sequence[torch.Tensor]) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1) for p in parts])


@dataclass(frozen=True)
class Peer:
    name: str
    prepare: Callable[[np.ndarray, Layout], object]  # flat -> the framework's in-memory form
    encode: Callable[[object], list[bytes]]  # -> the bytes it sends (one or more blobs)
    decode: Callable[[list[bytes]], np.ndarray]  # -> the flat vector again


def _pickle_encode(state: object) -> list[bytes]:
    return [pickle.dumps(state)]


def _pickle_decode(blobs: list[bytes]) -> np.ndarray:
    state = pickle.loads(blobs[0])  # our own bytes, as FedML does
    return flatten([t.numpy() for t in state.values()])


def _pickle_gzip_encode(state: object) -> list[bytes]:
    return [gzip.compress(pickle.dumps(state))]


def _pickle_gzip_decode(blobs: list[bytes]) -> np.ndarray:
    return _pickle_decode([gzip.decompress(blobs[0])])


def _npy_encode(arrays: object) -> list[bytes]:
    out = []
    for arr in arrays:  # type: ignore[attr-defined]
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        out.append(buf.getvalue())
    return out


def _npy_decode(blobs: list[bytes]) -> np.ndarray:
    return flatten([np.load(io.BytesIO(b), allow_pickle=False) for b in blobs])


def _zstd_encode(flat: object) -> list[bytes]:
    return [zstandard.ZstdCompressor(level=3).compress(flat.tobytes())]  # type: ignore[attr-defined]


def _zstd_decode(blobs: list[bytes]) -> np.ndarray:
    return np.frombuffer(zstandard.ZstdDecompressor().decompress(blobs[0]), dtype="<f4").copy()


PEERS: list[Peer] = [
    Peer("FedML pickle", to_state_dict, _pickle_encode, _pickle_decode),
    Peer("FedML pickle+gzip", to_state_dict, _pickle_gzip_encode, _pickle_gzip_decode),
    Peer("Flower .npy", to_arrays, _npy_encode, _npy_decode),
    Peer("fp32 + plain zstd", lambda flat, _: flat, _zstd_encode, _zstd_decode),
]
