"""Following a job's global model: the retained full model once, then each delta on top of it.

Edges and the serving node hold the same thing, the cloud's view, version by version. A delta of
version v applies only to version v - 1; anything else is a gap that only the full model closes.
"""

from __future__ import annotations

import enum

import numpy as np

from fedmq.codec import Limits, TensorChunk, assemble
from fedmq.errors import ProtocolError
from fedmq.transport.reassembly import Reassembler


class Step(enum.Enum):
    NONE = "none"  # nothing complete yet, or a copy of what we hold
    MODEL = "model"  # a full model was assembled
    APPLIED = "applied"  # a delta moved us one version on
    GAP = "gap"  # a delta that does not sit on what we hold: fetch the full model


class ModelFollower:
    def __init__(self, *, job: str, limits: Limits, max_bytes: int, timeout_s: float) -> None:
        self.job = job
        self.limits = limits
        self.parts = Reassembler(max_bytes=max_bytes, timeout_s=timeout_s)
        self.model: tuple[int, np.ndarray] | None = None  # (version, flat); never changed in place
        self.gap = False  # a delta did not apply: only a full model helps
        self.full_models = 0
        self.deltas_applied = 0

    @property
    def version(self) -> int | None:
        return self.model[0] if self.model is not None else None

    def forget(self) -> None:
        """A new job: what we hold belongs to another model."""
        self.model, self.gap = None, False

    def on_model(self, chunk: TensorChunk, now: float) -> Step:
        if chunk.role != "model" or chunk.job != self.job:
            raise ProtocolError(f"unexpected {chunk.role} chunk on the model topic")
        if self.model is not None and chunk.version == self.model[0] and not self.gap:
            return Step.NONE  # a retained copy of the version we hold
        # Any other version is taken, lower ones too: a restarted cloud begins again at 0.
        self.parts.discard_older(chunk.sender, "model", chunk.version)
        chunks = self.parts.add(chunk, now)
        if chunks is None:
            return Step.NONE
        self.model = (chunk.version, assemble(chunks, self.limits))
        self.gap = False
        self.full_models += 1
        return Step.MODEL

    def on_delta(self, chunk: TensorChunk, now: float) -> Step:
        if chunk.role != "delta" or chunk.job != self.job:
            raise ProtocolError(f"unexpected {chunk.role} chunk on the delta topic")
        if self.model is not None and chunk.version <= self.model[0]:
            return Step.NONE  # we hold that version already (a full model arrived first)
        chunks = self.parts.add(chunk, now)
        if chunks is None:
            return Step.NONE
        model = self.model
        if model is not None and model[0] == chunk.version - 1:
            change = assemble(chunks, self.limits, require_finite=True)
            if change.size == model[1].size:
                # A new array, never an in-place add: readers keep the one they started on.
                self.model = (chunk.version, model[1] + change)
                self.deltas_applied += 1
                return Step.APPLIED
        self.gap = True
        return Step.GAP
