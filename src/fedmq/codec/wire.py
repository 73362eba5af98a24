"""The short msgpack key each message field travels under (schema version 2).

Key names were 109 of the 247 bytes of a typical update chunk's header in version 1 (174 bytes
in version 2): on a link that carries a few hundred bytes a packet, a header is paid for every
chunk of every update.
Keys are one or two ASCII characters, unique within a message; "v" and "k" (schema version and
kind) are the envelope's own and never a field's. docs/protocol.md lists the same table.
"""

from __future__ import annotations

from dataclasses import fields

from fedmq.codec.messages import KINDS, Message

WIRE_KEYS: dict[type[Message], dict[str, str]] = {
    KINDS["status"]: {
        "job": "j", "sender": "s", "role": "o", "online": "u", "num_samples": "w", "profile": "p",
    },
    KINDS["job"]: {
        "job": "j", "model": "m", "dataset": "d", "partition": "P", "clients": "c", "seed": "S",
        "codec": "e", "max_payload": "x", "layout": "L", "drift": "D", "rounds": "R",
    },
    KINDS["task"]: {
        "job": "j", "round": "r", "version": "n", "salt": "s", "threshold": "h",
        "deadline_s": "t", "local_epochs": "E", "batch_size": "B", "lr": "l", "momentum": "M",
        "codec": "e", "mode": "a", "attempt": "A", "prox_mu": "p", "next": "N",
    },
    KINDS["chunk"]: {
        "job": "j", "sender": "s", "role": "o", "round": "r", "version": "n", "index": "i",
        "count": "c", "total": "t", "offset": "f", "length": "l", "encoding": "e", "scale": "x",
        "num_samples": "w", "metrics": "m", "digest": "d", "data": "b", "sig": "g",
    },
    KINDS["summary"]: {
        "job": "j", "round": "r", "version": "n", "accuracy": "a", "loss": "l",
        "participants": "c", "num_samples": "w", "duration_s": "t",
    },
    KINDS["control"]: {"job": "j", "command": "C", "reason": "R"},
}  # fmt: skip

FIELD_OF: dict[type[Message], dict[str, str]] = {
    cls: {key: name for name, key in keys.items()} for cls, keys in WIRE_KEYS.items()
}


def _check() -> None:
    # A table that drifts from the dataclasses would corrupt messages silently: fail at import.
    for cls, keys in WIRE_KEYS.items():
        names = [f.name for f in fields(cls)]
        if sorted(names) != sorted(keys) or len(set(keys.values())) != len(keys):
            raise RuntimeError(f"wire key table of {cls.__name__} does not match its fields")
        if {"v", "k"} & set(keys.values()):
            raise RuntimeError(f"{cls.__name__} uses an envelope key")


_check()
