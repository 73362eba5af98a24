"""Messages <-> msgpack payloads: {"v": SCHEMA_VERSION, "k": kind, <key>: <value>, ...}.

Each field travels under its short key from `wire.WIRE_KEYS`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar, overload

import msgpack

from fedmq.codec.limits import DEFAULT_LIMITS, SCHEMA_VERSION, Limits
from fedmq.codec.messages import KINDS, JobSpec, Message, TensorChunk
from fedmq.codec.wire import FIELD_OF, WIRE_KEYS
from fedmq.errors import CodecError, LimitExceeded, SchemaVersionError

M = TypeVar("M", bound=Message)

_KIND_OF: dict[type[Message], str] = {cls: kind for kind, cls in KINDS.items()}
_FIELDS: dict[type[Message], tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in KINDS.values()
}
_ENVELOPE_KEYS = 32  # more keys than any message has


def encode(msg: Message) -> bytes:
    """One msgpack map; field values are already validated by the message itself."""
    kind = _KIND_OF.get(type(msg))
    if kind is None:
        raise CodecError(f"not a message: {type(msg).__name__}")
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "k": kind}
    keys = WIRE_KEYS[type(msg)]
    for name in _FIELDS[type(msg)]:
        value = getattr(msg, name)
        body[keys[name]] = dict(value) if name == "metrics" else value
    try:
        return bytes(msgpack.packb(body, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot pack {kind}: {exc}") from exc


class _TooManyContainers(Exception):
    pass


def _unpack(payload: bytes | bytearray | memoryview, limits: Limits) -> object:
    # Each length is capped, but not how many containers there are: 1 MiB of empty maps
    # would build ~70 MiB of Python objects before any schema check. The hooks run as each
    # container completes, so counting there stops the build early. The most a valid message
    # holds is a JobSpec layout: two arrays per tensor, plus the envelope.
    budget = [2 * limits.max_layout + 16]

    def count(container: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooManyContainers
        return container

    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            list_hook=count,
            object_hook=count,
            max_str_len=limits.max_name_len,
            max_bin_len=limits.max_payload,
            max_array_len=max(limits.max_selected, limits.max_layout, limits.max_dims, 2),
            max_map_len=max(limits.max_metrics, _ENVELOPE_KEYS),
            max_ext_len=0,
        )
    except _TooManyContainers:
        raise LimitExceeded(
            f"payload: more than {2 * limits.max_layout + 16} arrays and maps"
        ) from None
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        if "exceeds max_" in str(exc):  # msgpack's own length limits
            raise LimitExceeded(f"payload: {exc}") from exc
        raise CodecError(f"payload is not valid msgpack: {exc}") from exc


def check_limits(msg: Message, limits: Limits) -> None:
    """The configurable limits on counts and sizes; the message has validated everything else."""
    if isinstance(msg, JobSpec):
        if len(msg.layout) > limits.max_layout:
            raise LimitExceeded(f"JobSpec.layout has {len(msg.layout)} tensors > max_layout")
        for name, shape in msg.layout:
            if len(shape) > limits.max_dims:
                raise LimitExceeded(f"JobSpec.layout {name!r} has {len(shape)} dims > max_dims")
        if msg.num_params > limits.max_params:
            raise LimitExceeded(f"JobSpec has {msg.num_params} parameters > max_params")
        if msg.max_payload > limits.max_payload:
            need = f"{msg.max_payload} > our max_payload {limits.max_payload}"
            raise LimitExceeded(f"JobSpec.max_payload {need}")
    elif isinstance(msg, TensorChunk):
        for name, value, limit in (
            ("length", msg.length, limits.max_chunk_elems),
            ("total", msg.total, limits.max_params),
            ("count", msg.count, limits.max_chunks),
            ("metrics", len(msg.metrics), limits.max_metrics),
        ):
            if value > limit:
                raise LimitExceeded(f"TensorChunk.{name} {value} over limit {limit}")


@overload
def decode(
    payload: bytes | bytearray | memoryview, limits: Limits = ..., expect: None = None
) -> Message: ...
@overload
def decode(payload: bytes | bytearray | memoryview, limits: Limits, expect: type[M]) -> M: ...
@overload
def decode(payload: bytes | bytearray | memoryview, *, expect: type[M]) -> M: ...
def decode(
    payload: bytes | bytearray | memoryview,
    limits: Limits = DEFAULT_LIMITS,
    expect: type[Any] | None = None,
) -> Message:
    """Decode one untrusted payload; raises a CodecError subclass for anything but a valid one."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    size = memoryview(payload).nbytes
    if size > limits.max_payload:
        raise LimitExceeded(f"payload is {size} bytes > max_payload {limits.max_payload}")
    body = _unpack(payload, limits)
    if not isinstance(body, dict):
        raise CodecError(f"payload is a msgpack {type(body).__name__}, not a map")
    version = body.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CodecError("payload has no integer schema version 'v'")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(f"schema version {version}; this build reads {SCHEMA_VERSION}")
    kind = body.get("k")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise CodecError(f"unknown message kind {kind!r}")
    if expect is not None and cls is not expect:
        raise CodecError(f"expected {expect.__name__}, got {cls.__name__}")
    field_of = FIELD_OF[cls]
    keys = set(body) - {"v", "k"}
    if missing := set(field_of) - keys:
        named = sorted(f"{field_of[k]} ({k!r})" for k in missing)
        raise CodecError(f"{cls.__name__} misses fields {named}")
    if unknown := keys - set(field_of):
        raise CodecError(f"{cls.__name__} has unknown fields {sorted(map(repr, unknown))}")
    msg = cls(**{name: body[key] for key, name in field_of.items()})
    check_limits(msg, limits)
    return msg
