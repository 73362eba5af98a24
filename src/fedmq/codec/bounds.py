"""The byte bound reserved for a chunk's header, from msgpack's worst-case size of each field.

A chunk payload is its header (every field but the bytes of `data`) plus len(data). Strings are
at most `max_name_len` bytes, the metrics map at most `max_metrics` entries, every int fits
int64/uint64 (<= 9 bytes), every float is a float64 (9 bytes), and bin headers take <= 5 bytes.
"""

from __future__ import annotations

import functools
from dataclasses import fields

from fedmq.codec.limits import ALIGN, DEFAULT_LIMITS, DIGEST_SIZE, Limits
from fedmq.codec.messages import CHUNK_ROLES, SIG_SIZE, TensorChunk
from fedmq.codec.spec import CodecSpec
from fedmq.codec.tensors import max_data_bytes
from fedmq.codec.wire import WIRE_KEYS

NUMBER = 9  # largest msgpack int (uint64/int64) or float (float64), tag included
BIN_HEADER = 5  # largest msgpack bin header (bin32)


def str_size(n: int) -> int:
    """Bytes msgpack takes for a str of n UTF-8 bytes."""
    return n + (1 if n <= 31 else 2 if n <= 0xFF else 3 if n <= 0xFFFF else 5)


def bin_size(n: int) -> int:
    return n + (2 if n <= 0xFF else 3 if n <= 0xFFFF else 5)


def map_header(n: int) -> int:
    return 1 if n <= 15 else 3 if n <= 0xFFFF else 5


@functools.lru_cache(maxsize=16)
def header_size_bound(limits: Limits = DEFAULT_LIMITS) -> int:
    """Most bytes a chunk payload can take beyond len(data), for chunks within `limits`."""
    name = str_size(limits.max_name_len)
    value_bound = {
        "job": name,
        "sender": name,
        "role": str_size(max(len(r) for r in CHUNK_ROLES)),
        "encoding": name,
        "metrics": map_header(limits.max_metrics) + limits.max_metrics * (name + NUMBER),
        "digest": bin_size(DIGEST_SIZE),
        "data": BIN_HEADER,
        "sig": bin_size(SIG_SIZE),
    }
    keys = WIRE_KEYS[TensorChunk]
    size = map_header(len(keys) + 2) + str_size(1) + 1 + str_size(1) + str_size(len("chunk"))
    for f in fields(TensorChunk):
        size += str_size(len(keys[f.name])) + value_bound.get(f.name, NUMBER)
    return size


def min_payload(spec: CodecSpec | None = None) -> int:
    """Smallest max_payload that carries one ALIGN block of `spec` (of any codec if None).

    fp32 needs the most: a top-k chunk is never bigger than its dense form (it is sent dense
    when sparse would not be smaller), and no value stage takes more than 32 bits.
    """
    return header_size_bound() + max_data_bytes(spec or CodecSpec("fp32"), ALIGN)


MIN_PAYLOAD = min_payload()
