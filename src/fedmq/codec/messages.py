"""Wire messages: frozen dataclasses that validate (and normalise) themselves on construction.

Checks here are the protocol's own rules; the configurable `Limits` on counts and sizes are
applied by `decode` and by the chunk functions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fedmq.codec import _fields as f
from fedmq.codec.limits import ALIGN, DIGEST_SIZE
from fedmq.errors import CodecError

STATUS_ROLES = ("edge", "cloud")
# global model from the cloud | delta from an edge | change of the global model from the cloud
CHUNK_ROLES = ("model", "update", "delta")
COMMANDS = ("stop",)
# sync: rounds with a deadline; async: edges train whenever free, the cloud buffers (FedBuff);
# chain: the model passes from edge to edge in the task's order, the cloud watching each hop
MODES = ("sync", "async", "chain")
SIG_SIZE = 64  # an Ed25519 signature
SALT_SIZE = 8  # RoundTask.salt and RoundTask.threshold: 8 bytes each, whatever the fleet
SELECT_ALL = b"\xff" * SALT_SIZE  # the threshold that selects every edge


def selection_hash(salt: bytes, node_id: str) -> bytes:
    """`BLAKE2b(salt || utf8(node_id), digest_size=8)`: compared as a big-endian uint64.

    An edge learns whether a task selects it from 16 bytes (salt and threshold) instead of a
    list of every selected id, which grew the task, sent to every edge, with the fleet.
    """
    return hashlib.blake2b(bytes(salt) + node_id.encode("utf-8"), digest_size=SALT_SIZE).digest()


def threshold_for(salt: bytes, chosen: Iterable[str], others: Iterable[str]) -> bytes | None:
    """The threshold that selects every id of `chosen` and none of `others` under `salt`, or
    None when no threshold can (an id of `others` hashes at or below one of `chosen`)."""
    top = max((selection_hash(salt, n) for n in chosen), default=None)
    if top is None or any(selection_hash(salt, n) <= top for n in others):
        return None
    return top


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalise a field of a frozen dataclass


@dataclass(frozen=True, slots=True)
class Status:
    """Presence: birth message (online=True) and last will (online=False)."""

    job: str
    sender: str
    role: str  # "edge" | "cloud"
    online: bool
    num_samples: int = 0  # size of the sender's local dataset
    profile: str = ""  # device profile name, free text

    def __post_init__(self) -> None:
        _set(self, "job", f.text("Status.job", self.job, topic=True))
        _set(self, "sender", f.text("Status.sender", self.sender, topic=True))
        _set(self, "role", f.choice("Status.role", self.role, STATUS_ROLES))
        _set(self, "online", f.flag("Status.online", self.online))
        _set(self, "num_samples", f.integer("Status.num_samples", self.num_samples))
        _set(self, "profile", f.text("Status.profile", self.profile, empty=True))


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Published retained by the cloud; an edge builds its model from it."""

    job: str
    model: str
    dataset: str
    partition: str
    clients: int  # >= 1
    seed: int
    codec: str  # codec spec for model chunks and updates
    max_payload: int  # bytes; every payload of the job fits in it
    layout: tuple[tuple[str, tuple[int, ...]], ...]  # (param name, shape) in flat order
    drift: str = "none"  # how each edge's data changes over the rounds (workloads.drift)
    rounds: int = 0  # rounds the job is planned for (drift schedules end there); 0: unknown

    def __post_init__(self) -> None:
        _set(self, "job", f.text("JobSpec.job", self.job, topic=True))
        for name in ("model", "dataset", "partition"):
            _set(self, name, f.text(f"JobSpec.{name}", getattr(self, name)))
        _set(self, "clients", f.integer("JobSpec.clients", self.clients, minimum=1))
        _set(self, "seed", f.integer("JobSpec.seed", self.seed))
        _set(self, "codec", f.codec("JobSpec.codec", self.codec))
        from fedmq.codec.bounds import MIN_PAYLOAD  # bounds needs TensorChunk, defined below

        _set(self, "max_payload", f.integer("JobSpec.max_payload", self.max_payload, minimum=1))
        if self.max_payload < MIN_PAYLOAD:
            raise CodecError(f"JobSpec.max_payload {self.max_payload} < minimum {MIN_PAYLOAD}")
        _set(self, "layout", f.layout("JobSpec.layout", self.layout))
        _set(self, "drift", f.text("JobSpec.drift", self.drift))
        _set(self, "rounds", f.integer("JobSpec.rounds", self.rounds))

    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.layout)


@dataclass(frozen=True, slots=True)
class RoundTask:
    """Published retained by the cloud at the start of each round."""

    job: str
    round: int
    version: int  # global model version the selected clients train from
    # An edge is selected iff selection_hash(salt, its id) <= threshold (8 bytes each, compared
    # as big-endian uint64): constant size, where a list of ids grew with the fleet.
    salt: bytes
    threshold: bytes  # SELECT_ALL: every edge
    deadline_s: float  # > 0, seconds from receipt
    local_epochs: int
    batch_size: int  # >= 1
    lr: float  # >= 0
    momentum: float  # SGD momentum in [0, 1); the buffer starts from zero every round
    codec: str  # codec spec the edges use for their updates
    mode: str = "sync"  # "sync" | "async" (updates are never late) | "chain" (see MODES)
    attempt: int = 0  # bumped when a restarted cloud re-issues a round: edges resend
    prox_mu: float = 0.0  # FedProx proximal term for local training; 0: plain SGD
    # Chained mode, on chain/<edge> only: where this edge passes the model on ("cloud" after the
    # last edge). Empty in every other task, which is the same for every edge.
    next: str = ""

    def __post_init__(self) -> None:
        _set(self, "job", f.text("RoundTask.job", self.job, topic=True))
        _set(self, "round", f.integer("RoundTask.round", self.round))
        _set(self, "version", f.integer("RoundTask.version", self.version))
        _set(self, "salt", f.fixed_blob("RoundTask.salt", self.salt, SALT_SIZE))
        _set(self, "threshold", f.fixed_blob("RoundTask.threshold", self.threshold, SALT_SIZE))
        _set(self, "deadline_s", f.real("RoundTask.deadline_s", self.deadline_s, positive=True))
        _set(self, "local_epochs", f.integer("RoundTask.local_epochs", self.local_epochs))
        _set(self, "batch_size", f.integer("RoundTask.batch_size", self.batch_size, minimum=1))
        _set(self, "lr", f.real("RoundTask.lr", self.lr, minimum=0.0))
        _set(self, "momentum", f.real("RoundTask.momentum", self.momentum, minimum=0.0))
        if self.momentum >= 1.0:
            raise CodecError(f"RoundTask.momentum must be < 1, got {self.momentum}")
        _set(self, "codec", f.codec("RoundTask.codec", self.codec))
        _set(self, "mode", f.choice("RoundTask.mode", self.mode, MODES))
        _set(self, "attempt", f.integer("RoundTask.attempt", self.attempt))
        _set(self, "prox_mu", f.real("RoundTask.prox_mu", self.prox_mu, minimum=0.0))
        if self.next:
            _set(self, "next", f.text("RoundTask.next", self.next, topic=True))
        else:
            _set(self, "next", f.text("RoundTask.next", self.next, empty=True))

    def selects(self, node_id: str) -> bool:
        """Does this task select `node_id` (§11.1: hash at or below the threshold)?"""
        return selection_hash(self.salt, node_id) <= self.threshold


@dataclass(frozen=True, slots=True)
class TensorChunk:
    """One aligned slice [offset, offset+length) of a flat float32 parameter vector."""

    job: str
    sender: str
    role: str  # "model" (global model) | "delta" (its change from version-1) | "update" (edge)
    round: int
    version: int  # global model version this belongs to / is based on
    index: int  # chunk index in [0, count)
    count: int  # number of chunks of this vector, >= 1
    total: int  # total number of parameters of the vector
    offset: int  # multiple of ALIGN
    length: int  # multiple of ALIGN and > 0 except in the last chunk, which ends at total
    encoding: str  # codec spec actually used for THIS chunk, e.g. "topk:0.01+int8+zstd"
    scale: float  # dequantisation scale (int8, int4, sign), 1.0 otherwise; finite, > 0
    num_samples: int  # an update's FedAvg weight; 0 for role "model"
    metrics: Mapping[str, float] = field(hash=False)  # small (<= 16), usually only on index 0
    digest: bytes = field(repr=False)  # blake2b(data, digest_size=16)
    data: bytes = field(repr=False)  # encoded values
    sig: bytes = field(default=b"", repr=False)  # Ed25519 over `signing_bytes`, or empty

    def __post_init__(self) -> None:
        _set(self, "job", f.text("TensorChunk.job", self.job, topic=True))
        _set(self, "sender", f.text("TensorChunk.sender", self.sender, topic=True))
        _set(self, "role", f.choice("TensorChunk.role", self.role, CHUNK_ROLES))
        for name in ("round", "version", "index", "total", "offset", "length", "num_samples"):
            _set(self, name, f.integer(f"TensorChunk.{name}", getattr(self, name)))
        _set(self, "count", f.integer("TensorChunk.count", self.count, minimum=1))
        _set(self, "encoding", f.codec("TensorChunk.encoding", self.encoding))
        _set(self, "scale", f.real("TensorChunk.scale", self.scale, positive=True))
        _set(self, "metrics", f.metrics("TensorChunk.metrics", self.metrics))
        _set(self, "digest", f.blob("TensorChunk.digest", self.digest))
        _set(self, "data", f.blob("TensorChunk.data", self.data))
        _set(self, "sig", f.blob("TensorChunk.sig", self.sig))
        if len(self.sig) not in (0, SIG_SIZE):
            raise CodecError(f"TensorChunk.sig must be empty or {SIG_SIZE} bytes")
        self._check_geometry()
        if len(self.digest) != DIGEST_SIZE:
            raise CodecError(f"TensorChunk.digest must be {DIGEST_SIZE} bytes")
        if self.role != "update" and self.num_samples != 0:
            raise CodecError(f"TensorChunk.num_samples must be 0 for role {self.role!r}")

    def _check_geometry(self) -> None:
        where = f"TensorChunk {self.index}/{self.count} [{self.offset}, +{self.length})"
        if self.index >= self.count:
            raise CodecError(f"{where}: index must be < count")
        if self.offset % ALIGN:
            raise CodecError(f"{where}: offset must be a multiple of {ALIGN}")
        end = self.offset + self.length
        if end > self.total:
            raise CodecError(f"{where}: ends past total {self.total}")
        last = self.index == self.count - 1
        if last and end != self.total:
            raise CodecError(f"{where}: last chunk must end at total {self.total}")
        if not last and (self.length == 0 or self.length % ALIGN):
            raise CodecError(f"{where}: length must be a positive multiple of {ALIGN}")


@dataclass(frozen=True, slots=True)
class RoundSummary:
    """Published by the cloud after aggregating a round."""

    job: str
    round: int
    version: int  # the new global model version
    accuracy: float
    loss: float
    participants: int  # how many edges' updates were aggregated (the cloud's records name them)
    num_samples: int  # sum of their weights
    duration_s: float  # >= 0

    def __post_init__(self) -> None:
        _set(self, "job", f.text("RoundSummary.job", self.job, topic=True))
        _set(self, "round", f.integer("RoundSummary.round", self.round))
        _set(self, "version", f.integer("RoundSummary.version", self.version))
        _set(self, "accuracy", f.real("RoundSummary.accuracy", self.accuracy))
        _set(self, "loss", f.real("RoundSummary.loss", self.loss))
        _set(self, "participants", f.integer("RoundSummary.participants", self.participants))
        _set(self, "num_samples", f.integer("RoundSummary.num_samples", self.num_samples))
        _set(self, "duration_s", f.real("RoundSummary.duration_s", self.duration_s, minimum=0.0))


@dataclass(frozen=True, slots=True)
class Control:
    """Out-of-band commands from the cloud."""

    job: str
    command: str  # "stop"
    reason: str = ""  # free text for logs

    def __post_init__(self) -> None:
        _set(self, "job", f.text("Control.job", self.job, topic=True))
        _set(self, "command", f.choice("Control.command", self.command, COMMANDS))
        _set(self, "reason", f.text("Control.reason", self.reason, empty=True))


Message = Status | JobSpec | RoundTask | TensorChunk | RoundSummary | Control


# The "k" of each message kind in the envelope.
KINDS: dict[str, type[Message]] = {
    "status": Status,
    "job": JobSpec,
    "task": RoundTask,
    "chunk": TensorChunk,
    "summary": RoundSummary,
    "control": Control,
}
