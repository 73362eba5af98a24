"""The JSON prediction API shared by MQTT and HTTP: topics, request checks, replies (pure, no I/O).

Request:  {"id": "any", "inputs": [[f0, f1, ...], ...], "probabilities": false}
Reply:    {"id": ..., "version": N, "predictions": [c0, ...], "error": null}  (+ "probabilities")
Error:    {"id": ... | null, "version": N | null, "error": "message"}
See docs/protocol.md, "Serving".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from fedmq.errors import CodecError, ConfigError, LimitExceeded
from fedmq.transport import Topics

KEYS = ("id", "inputs", "probabilities")
MAX_ID_LEN = 128  # characters of a string request id
FLOAT32_MAX = float(np.finfo(np.float32).max)

JsonId = str | int | None


def request_topic(topics: Topics, client: str) -> str:
    return f"{topics.prefix}/predict/request/{client}"


def request_all(topics: Topics) -> str:
    return f"{topics.prefix}/predict/request/+"


def response_topic(topics: Topics, client: str) -> str:
    return f"{topics.prefix}/predict/response/{client}"


@dataclass(frozen=True)
class RequestLimits:
    max_bytes: int = 1 << 20  # bytes of one request, checked before parsing
    max_rows: int = 1024  # rows (samples) in one request

    def __post_init__(self) -> None:
        if self.max_bytes < 64 or self.max_rows < 1:
            raise ConfigError("max request bytes must be >= 64 and max rows >= 1")


@dataclass(frozen=True, eq=False)
class PredictRequest:
    id: JsonId
    inputs: np.ndarray  # float32 (rows, features), finite
    probabilities: bool  # also return the softmax of every row


@dataclass(frozen=True)
class Reply:
    """One answer: the JSON body, and the HTTP status it maps to (MQTT ignores the status)."""

    status: int  # 200 ok, 400 bad request, 413 over a limit, 500 inference failed, 503 no model
    body: dict[str, Any]

    @property
    def error(self) -> str | None:
        error = self.body.get("error")
        return error if isinstance(error, str) else None

    def encode(self) -> bytes:
        return json.dumps(self.body, allow_nan=False, separators=(",", ":")).encode()


def error_reply(status: int, message: str, *, id: JsonId = None, version: int | None) -> Reply:
    return Reply(status, {"id": id, "version": version, "error": message})


def rejected(exc: CodecError, *, id: JsonId = None, version: int | None) -> Reply:
    """The reply to a request that failed a check: 413 for a limit, else 400."""
    return error_reply(413 if isinstance(exc, LimitExceeded) else 400, str(exc), id=id,
                       version=version)  # fmt: skip


def ok_reply(
    request: PredictRequest, version: int, predictions: np.ndarray, probabilities: np.ndarray
) -> Reply:
    body: dict[str, Any] = {
        "id": request.id,
        "version": version,
        "predictions": [int(c) for c in predictions],
    }
    if request.probabilities:
        body["probabilities"] = probabilities.astype(float).tolist()
    body["error"] = None
    return Reply(200, body)


def _no_constants(name: str) -> NoReturn:
    raise CodecError(f"request is not valid JSON: {name} is not a JSON number")


def decode_body(payload: bytes, limits: RequestLimits) -> dict[str, Any]:
    """The request as a JSON object; its size is checked before anything is parsed."""
    if len(payload) > limits.max_bytes:
        raise LimitExceeded(f"request is {len(payload)} bytes; the limit is {limits.max_bytes}")
    if not payload.strip():
        raise CodecError("empty request; send a JSON object with 'inputs'")
    try:
        obj = json.loads(payload, parse_constant=_no_constants)
    except RecursionError:
        raise CodecError("request is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an int of too many digits
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"request is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CodecError('request must be a JSON object: {"id": ..., "inputs": [[...], ...]}')
    return obj


def read_id(obj: dict[str, Any]) -> JsonId:
    """The request id to echo back: a string of at most 128 characters, an integer, or absent."""
    rid = obj.get("id")
    if rid is None or (isinstance(rid, int) and not isinstance(rid, bool)):
        return rid
    if isinstance(rid, str) and len(rid) <= MAX_ID_LEN:
        return rid
    raise CodecError(f"id must be a string of at most {MAX_ID_LEN} characters or an integer")


def parse_request(
    obj: dict[str, Any], *, num_features: int, limits: RequestLimits
) -> PredictRequest:
    """Check every field of a decoded request against the model it goes to."""
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise CodecError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(KEYS)}"
        )
    rid = read_id(obj)
    want = f"a list of rows, each a list of {num_features} numbers"
    if "inputs" not in obj:
        raise CodecError(f"missing 'inputs': {want}")
    rows = obj["inputs"]
    if not isinstance(rows, list) or not rows:
        raise CodecError(f"'inputs' must be {want}, with at least one row")
    if len(rows) > limits.max_rows:
        raise LimitExceeded(f"'inputs' has {len(rows)} rows; the limit is {limits.max_rows}")
    out = np.empty((len(rows), num_features), dtype=np.float32)
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise CodecError(f"row {i} is not a list; 'inputs' must be {want}")
        if len(row) != num_features:
            raise CodecError(
                f"row {i} has {len(row)} values; the model takes {num_features} features"
            )
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CodecError(f"row {i}, value {j} is not a number")
            number = float(value) if abs(value) < 1 << 128 else math.inf  # ints: any size
            if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
                raise CodecError(f"row {i}, value {j} is not a finite float32 number")
            out[i, j] = number
    flag = obj.get("probabilities", False)
    if not isinstance(flag, bool):
        raise CodecError("'probabilities' must be true or false")
    return PredictRequest(rid, out, flag)
