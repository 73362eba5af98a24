"""Field validators shared by the message dataclasses. Each returns the normalised value or
raises CodecError / LimitExceeded with a message that names the field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from fedmq.codec.limits import DEFAULT_LIMITS, INT_MAX
from fedmq.codec.spec import CodecSpec
from fedmq.errors import CodecError, LimitExceeded

NAME_MAX = DEFAULT_LIMITS.max_name_len  # protocol cap on every string, in UTF-8 bytes
METRICS_MAX = DEFAULT_LIMITS.max_metrics  # protocol cap on a chunk's metrics map
TOPIC_FORBIDDEN = frozenset("/+#\0")  # job and sender names become MQTT topic levels


def text(field: str, value: object, *, topic: bool = False, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise CodecError(f"{field} must be a string, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise CodecError(f"{field} is not encodable as UTF-8") from exc
    if size > NAME_MAX:
        raise LimitExceeded(f"{field} is {size} bytes of UTF-8, limit {NAME_MAX}")
    if not value and not empty:
        raise CodecError(f"{field} must not be empty")
    bad = TOPIC_FORBIDDEN if topic else frozenset("\0")
    if bad.intersection(value):
        raise CodecError(f"{field} {value!r} contains one of {sorted(bad)!r}")
    return value


def integer(field: str, value: object, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecError(f"{field} must be an int, got {type(value).__name__}")
    if not minimum <= value <= INT_MAX:
        raise CodecError(f"{field} must be in [{minimum}, 2**63-1], got {value}")
    return value


def real(
    field: str, value: object, *, minimum: float | None = None, positive: bool = False
) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CodecError(f"{field} must be a float, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError as exc:
        raise CodecError(f"{field} is out of float range") from exc
    if not math.isfinite(out):
        raise CodecError(f"{field} must be finite, got {out}")
    if (minimum is not None and out < minimum) or (positive and out <= 0.0):
        raise CodecError(f"{field} must be {'> 0' if positive else f'>= {minimum}'}, got {out}")
    return out


def flag(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise CodecError(f"{field} must be a bool, got {type(value).__name__}")
    return value


def blob(field: str, value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise CodecError(f"{field} must be bytes, got {type(value).__name__}")
    return bytes(value)


def fixed_blob(field: str, value: object, size: int) -> bytes:
    out = blob(field, value)
    if len(out) != size:
        raise CodecError(f"{field} must be exactly {size} bytes, got {len(out)}")
    return out


def choice(field: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise CodecError(f"{field} must be one of {choices!r}, got {value!r}")
    return value


def codec(field: str, value: object) -> str:
    spec = text(field, value)
    try:
        CodecSpec.parse(spec)
    except CodecError as exc:
        raise CodecError(f"{field}: {exc}") from exc
    return spec


def names(field: str, value: object) -> tuple[str, ...]:
    """A list of distinct topic-safe names (client ids)."""
    if not isinstance(value, list | tuple):
        raise CodecError(f"{field} must be an array, got {type(value).__name__}")
    out = tuple(text(f"{field}[{i}]", v, topic=True) for i, v in enumerate(value))
    if len(set(out)) != len(out):
        raise CodecError(f"{field} lists a name twice")
    return out


def layout(field: str, value: object) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(value, list | tuple):
        raise CodecError(f"{field} must be an array, got {type(value).__name__}")
    out: list[tuple[str, tuple[int, ...]]] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise CodecError(f"{field}[{i}] must be [name, [dims...]]")
        name = text(f"{field}[{i}].name", entry[0])
        shape = entry[1]
        if not isinstance(shape, list | tuple):
            raise CodecError(f"{field}[{i}].shape must be an array of ints")
        dims = tuple(integer(f"{field}[{i}].shape[{j}]", d) for j, d in enumerate(shape))
        out.append((name, dims))
    if len({name for name, _ in out}) != len(out):
        raise CodecError(f"{field} lists a tensor name twice")
    return tuple(out)


def metrics(field: str, value: object) -> Mapping[str, float]:
    if not isinstance(value, Mapping):
        raise CodecError(f"{field} must be a map, got {type(value).__name__}")
    if len(value) > METRICS_MAX:
        raise LimitExceeded(f"{field} has {len(value)} entries, limit {METRICS_MAX}")
    out = {text(f"{field} key", k): real(f"{field}[{k!r}]", v) for k, v in value.items()}
    return MappingProxyType(out)
