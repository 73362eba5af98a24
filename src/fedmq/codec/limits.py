"""Protocol constants and the decode-side limits applied to untrusted input."""

from __future__ import annotations

from dataclasses import dataclass, fields

from fedmq.errors import ConfigError

SCHEMA_VERSION: int = 3  # the "v" of every envelope this build writes and reads (2: short keys;
# 3: a task selects by salt and threshold, a summary counts its participants)
ALIGN: int = 64  # chunk offsets are multiples of ALIGN elements (the last chunk may be shorter)
DIGEST_SIZE: int = 16  # bytes of blake2b(data, digest_size=16) carried by every chunk
INT_MAX: int = 2**63 - 1  # every integer field is in [0, INT_MAX]: fits int64 and uint64 alike


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on what a decoder accepts; every one is checked before memory is allocated."""

    max_payload: int = 1 << 20  # bytes of one MQTT payload we accept (1 MiB)
    max_params: int = 50_000_000  # total parameters of a model (200 MB as float32)
    max_chunks: int = 65_536  # chunks of one vector
    max_chunk_elems: int = 1 << 20  # elements in one chunk (4 MiB as float32, after zstd)
    max_name_len: int = 128  # UTF-8 bytes of every string: names, codec specs, reasons...
    max_selected: int = 10_000  # clients listed in one RoundTask / RoundSummary
    max_metrics: int = 16  # entries of a chunk's metrics map
    max_layout: int = 4096  # tensors listed in a JobSpec layout
    max_dims: int = 8  # dimensions of one tensor in a JobSpec layout

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"Limits.{f.name} must be a positive int, got {value!r}")
        if self.max_name_len < 16:
            # kind names, codec specs and metric names must fit as strings
            raise ConfigError(f"Limits.max_name_len must be >= 16, got {self.max_name_len}")


DEFAULT_LIMITS = Limits()
