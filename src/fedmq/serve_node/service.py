"""The job's model as a predictor, and one request answered end to end (blocking: a worker thread).

A `Predictor` is built from a JobSpec like an edge builds its model, and checked against the
job's layout; `respond` runs every check of `api` and then the forward pass, off the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from fedmq.codec import JobSpec
from fedmq.errors import CodecError, ConfigError, FedmqError, ProtocolError
from fedmq.serve_node import api
from fedmq.workloads import layout, load_dataset, make_model, set_flat


class Predictor:
    """The job's model, loaded with one flat vector at a time; thread-safe."""

    def __init__(self, job: JobSpec) -> None:
        """Blocking: reads the dataset's shape (features, classes) as edges do."""
        try:
            train, _ = load_dataset(job.dataset, seed=job.seed)
            model = make_model(
                job.model,
                num_features=train.num_features,
                num_classes=train.num_classes,
                feature_shape=train.feature_shape,
            )
        except ConfigError as exc:
            raise ProtocolError(
                f"cannot build model {job.model!r} of job {job.job}: {exc}"
            ) from exc
        if layout(model) != job.layout:
            raise ProtocolError(f"model {job.model!r} here does not match the job's layout")
        self.job = job
        self.num_features = train.num_features
        self.num_classes = train.num_classes
        self.num_params = job.num_params
        self._model = model.eval()
        self._loaded: np.ndarray | None = None  # the flat vector now in the model's weights
        self._lock = threading.Lock()

    def predict(self, flat: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(classes int64 (B,), probabilities float32 (B, classes)) of `x` float32 (B, F)."""
        with self._lock, torch.inference_mode():
            if self._loaded is not flat:  # flats are never changed in place: identity suffices
                set_flat(self._model, flat)
                self._loaded = flat
            x = np.require(x, np.float32, ["C", "W"])  # copied only if read-only or strided
            batch = torch.from_numpy(x)  # (B, F)
            logits = self._model(batch)  # (B, classes)
            probs = torch.softmax(logits, dim=1)
            return probs.argmax(dim=1).numpy(), probs.numpy()


@dataclass(frozen=True, eq=False)
class Served:
    """What answers right now: a model version, its flat vector and the predictor it fits."""

    version: int
    flat: np.ndarray
    predictor: Predictor


def respond(
    payload: bytes, served: Served | None, limits: api.RequestLimits, why: str
) -> api.Reply:
    """The reply to one request; `why` says what is missing when `served` is None."""
    version = served.version if served is not None else None
    try:
        obj = api.decode_body(payload, limits)
    except CodecError as exc:
        return api.rejected(exc, version=version)
    try:
        rid = api.read_id(obj)
    except CodecError as exc:
        return api.rejected(exc, version=version)
    if served is None:
        return api.error_reply(503, f"no model yet: {why}", id=rid, version=None)
    try:
        request = api.parse_request(obj, num_features=served.predictor.num_features, limits=limits)
    except CodecError as exc:
        return api.rejected(exc, id=rid, version=version)
    try:
        classes, probs = served.predictor.predict(served.flat, request.inputs)
    except (FedmqError, RuntimeError) as exc:  # torch raises RuntimeError
        return api.error_reply(500, f"inference failed: {exc}", id=rid, version=version)
    return api.ok_reply(request, served.version, classes, probs)
