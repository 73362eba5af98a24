"""A reference decoder for fedmq's wire protocol, written from docs/protocol.md alone.

It imports nothing from `fedmq`: only the standard library, msgpack, zstandard and numpy.
It covers what a default sync run sends: `job`, `summary` and `chunk` messages (roles `model`,
`delta`, `update`) in the dense codecs `fp32[+zstd]` and `int8[+zstd]`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import msgpack
import numpy as np
import zstandard

SCHEMA_VERSION = 3
ALIGN = 64
MAX_PAYLOAD = 1_048_576
MAX_NAME_LEN = 128
MAX_ARRAY = 10_000
MAX_MAP = 32
MAX_DEPTH = 4

KEYS: dict[str, dict[str, str]] = {
    "job": {
        "j": "job",
        "m": "model",
        "d": "dataset",
        "P": "partition",
        "c": "clients",
        "S": "seed",
        "e": "codec",
        "x": "max_payload",
        "L": "layout",
        "D": "drift",
        "R": "rounds",
    },
    "chunk": {
        "j": "job",
        "s": "sender",
        "o": "role",
        "r": "round",
        "n": "version",
        "i": "index",
        "c": "count",
        "t": "total",
        "f": "offset",
        "l": "length",
        "e": "encoding",
        "x": "scale",
        "w": "num_samples",
        "m": "metrics",
        "d": "digest",
        "b": "data",
        "g": "sig",
    },
    "summary": {
        "j": "job",
        "r": "round",
        "n": "version",
        "a": "accuracy",
        "l": "loss",
        "c": "participants",
        "w": "num_samples",
        "t": "duration_s",
    },
}


class DecodeError(ValueError):
    pass


def _depth(obj: Any, level: int = 1) -> None:
    """§8 step 2: no valid message nests more than 4 containers deep."""
    if not isinstance(obj, dict | list):
        return
    if level > MAX_DEPTH:
        raise DecodeError("nesting too deep")
    for item in obj.items() if isinstance(obj, dict) else obj:
        if isinstance(obj, dict):
            _depth(item[1], level + 1)
        else:
            _depth(item, level + 1)


def decode(payload: bytes) -> dict[str, Any]:
    """One payload -> {"kind": k, field name: value, ...} (§1, §8 steps 1-4)."""
    if len(payload) > MAX_PAYLOAD:
        raise DecodeError("payload too large")
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=False,
            use_list=True,
            max_str_len=MAX_NAME_LEN,
            max_bin_len=MAX_PAYLOAD,
            max_array_len=MAX_ARRAY,
            max_map_len=MAX_MAP,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several classes
        raise DecodeError(f"msgpack: {exc}") from exc
    _depth(obj)
    if not isinstance(obj, dict) or obj.get("v") != SCHEMA_VERSION:
        raise DecodeError("not a version-3 envelope")
    kind = obj.get("k")
    if kind not in KEYS and kind not in ("status", "task", "control"):
        raise DecodeError(f"unknown kind {kind!r}")
    out: dict[str, Any] = {"kind": kind}
    if kind in KEYS:
        names = KEYS[kind]
        if set(obj) - {"v", "k"} != set(names):
            raise DecodeError(f"wrong keys for {kind}")
        out.update({names[k]: v for k, v in obj.items() if k not in ("v", "k")})
    return out


def chunk_values(c: dict[str, Any]) -> np.ndarray:
    """The float32 values of one dense fp32/int8 chunk, with or without zstd (§5, §7)."""
    data: bytes = c["data"]
    if hashlib.blake2b(data, digest_size=16).digest() != c["digest"]:
        raise DecodeError("digest mismatch")
    stages = c["encoding"].split("+")
    zstd = stages[-1] == "zstd"
    if zstd:
        stages = stages[:-1]
    if len(stages) != 1:
        raise DecodeError(f"unsupported encoding {c['encoding']!r}")
    value = stages[0].split(":")[0]
    n = c["length"]
    width = {"fp32": 4, "int8": 1}.get(value)
    if width is None:
        raise DecodeError(f"unsupported value stage {value!r}")
    size = n * width
    if zstd:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=max(size, 1))
        # undo the byte shuffle: s[b*n + i] = r[i*w + b]
        raw = np.frombuffer(raw, np.uint8).reshape(width, n).T.tobytes()
    else:
        raw = data
    if len(raw) != size:
        raise DecodeError("wrong data size")
    if value == "fp32":
        out = np.frombuffer(raw, "<f4").astype(np.float32)
    else:
        q = np.frombuffer(raw, np.int8).astype(np.float64)
        out = (q * float(c["scale"])).astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise DecodeError("non-finite value")
    return out


def assemble(chunks: list[dict[str, Any]]) -> tuple[int, np.ndarray, np.ndarray]:
    """(start, vector, covered) of one vector's chunks (§6, §8 'Assembling').

    `covered` marks the elements the chunks tile; a head-only update starts at `start > 0`.
    """
    first = chunks[0]
    count, total = first["count"], first["total"]
    by_index = {c["index"]: c for c in chunks}
    if sorted(by_index) != list(range(count)) or len(chunks) != count:
        raise DecodeError("incomplete vector")
    out = np.zeros(total, np.float32)
    covered = np.zeros(total, bool)
    pos = by_index[0]["offset"]
    start = pos
    for i in range(count):
        c = by_index[i]
        if c["offset"] != pos or c["offset"] % ALIGN:
            raise DecodeError("chunks do not tile")
        out[pos : pos + c["length"]] = chunk_values(c)
        covered[pos : pos + c["length"]] = True
        pos += c["length"]
    if pos != total:
        raise DecodeError("last chunk does not end at total")
    return start, out, covered


def unflatten(flat: np.ndarray, layout: list[list[Any]]) -> dict[str, np.ndarray]:
    """The named tensors of a flat vector, row-major in layout order (§3 `job`)."""
    out: dict[str, np.ndarray] = {}
    pos = 0
    for name, dims in layout:
        size = math.prod(dims)
        out[name] = flat[pos : pos + size].reshape(dims)
        pos += size
    if pos != flat.size:
        raise DecodeError("layout does not match the vector")
    return out
