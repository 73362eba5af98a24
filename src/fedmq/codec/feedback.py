"""Error feedback: an edge keeps what its lossy codec did not deliver and adds it next round.

Pure state, no I/O. One instance per edge and vector (the uplink delta), used every round:

    ef = ErrorFeedback(delta.size)               # once; only when CodecSpec.lossy
    compensated = ef.compensate(delta)           # delta + residual
    decoded = np.empty_like(compensated)
    payloads = split_vector(compensated, spec, ..., decoded=decoded)
    ef.update(decoded)                           # residual = compensated - decoded

With residual r_0 = 0, compensated c_t = delta_t + r_t and r_{t+1} = c_t - decoded_t, so the
decoded updates add up to the true ones but for the last residual:
sum(decoded_1..T) = sum(delta_1..T) - r_{T+1} (up to float32 rounding). Nothing is lost for
good; it is only late (Seide et al. 2014; Karimireddy et al. 2019, EF-SGD).
"""

from __future__ import annotations

import numpy as np

from fedmq.codec.tensors import F32
from fedmq.errors import CodecError


class ErrorFeedback:
    """The residual of one vector: what was meant to be sent but was not, as float32."""

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CodecError(f"ErrorFeedback size must be a non-negative int, got {size!r}")
        self.size = size
        self._residual: F32 = np.zeros(size, dtype=np.float32)
        self._pending: F32 | None = None  # the last compensated vector, until update/discard

    @property
    def residual(self) -> F32:
        """A read-only view of the residual carried into the next `compensate`."""
        view = self._residual.view()
        view.flags.writeable = False
        return view

    def _check(self, name: str, values: object) -> F32:
        if (
            not isinstance(values, np.ndarray)
            or values.dtype != np.float32
            or values.shape != (self.size,)
        ):
            raise CodecError(f"ErrorFeedback.{name} needs a float32 array of shape ({self.size},)")
        if not np.isfinite(values).all():
            raise CodecError(f"ErrorFeedback.{name}: values contain NaN or Inf")
        return values

    def compensate(self, delta: F32) -> F32:
        """delta + residual: the vector to encode and send this round (a new array)."""
        compensated = self._check("compensate", delta) + self._residual
        self._pending = compensated
        return compensated.copy()

    def update(self, decoded: F32) -> None:
        """After sending: residual = compensated - decoded, where `decoded` is exactly what the
        receiver decodes from what was sent (`split_vector(..., decoded=...)`)."""
        if self._pending is None:
            raise CodecError("ErrorFeedback.update needs a compensate() first")
        self._residual = self._pending - self._check("update", decoded)
        self._pending = None

    def discard(self) -> None:
        """The compensated vector was never sent (round closed): keep the residual as it was."""
        self._pending = None

    def reset(self) -> None:
        """Forget everything (a new job, or a model whose size changed)."""
        self._residual = np.zeros(self.size, dtype=np.float32)
        self._pending = None
