"""The serve node without a network: request checks, predictor, version following, HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import pytest
import torch

from fedmq.cli.main import build_parser
from fedmq.cli.serve import cmd_serve
from fedmq.codec import CodecSpec, JobSpec, encode, split_vector
from fedmq.errors import CodecError, ConfigError, LimitExceeded, ProtocolError
from fedmq.serve_node import Predictor, RequestLimits, ServeConfig, Served, ServeNode
from fedmq.serve_node.api import decode_body, parse_request
from fedmq.serve_node.httpd import HttpError, parse_http_address, read_request
from fedmq.serve_node.runtime import ServeReport
from fedmq.serve_node.service import respond
from fedmq.transport import Topics
from fedmq.workloads import build_model, get_flat, layout, load_dataset, set_flat

pytestmark = pytest.mark.unit

LIMITS = RequestLimits(max_bytes=4096, max_rows=4)
JOB = "unit"


def _job(model: str = "mlp") -> JobSpec:
    net = build_model(model, num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=0)
    return JobSpec(
        job=JOB, model=model, dataset="digits", partition="iid", clients=2, seed=0,
        codec="fp32+zstd", max_payload=128 * 1024, layout=layout(net),
    )  # fmt: skip


def _flat(seed: int) -> np.ndarray:
    net = build_model("mlp", num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=seed)
    return get_flat(net)


def _request(**fields: object) -> bytes:
    return json.dumps(fields).encode()


# -- request checks ---------------------------------------------------------------------------


def test_a_valid_request_becomes_a_float32_batch() -> None:
    obj = decode_body(_request(id="a", inputs=[[1] * 64, [0.5] * 64], probabilities=True), LIMITS)
    req = parse_request(obj, num_features=64, limits=LIMITS)
    assert req.id == "a" and req.probabilities
    assert req.inputs.dtype == np.float32 and req.inputs.shape == (2, 64)
    assert req.inputs[1, 3] == np.float32(0.5)


def test_the_size_is_checked_before_parsing() -> None:
    with pytest.raises(LimitExceeded, match="4096"):
        decode_body(b"not json at all " * 300, LIMITS)  # would be a CodecError if parsed


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty request"),
        (b"{nope", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b'{"inputs": [[NaN]]}', "NaN is not a JSON number"),
        (b'{"inputs": [[Infinity]]}', "Infinity is not a JSON number"),
        (b"[" * 3000, "nested too deeply|not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_undecodable_requests_are_codec_errors(payload: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_body(payload, LIMITS)


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"inputs": [[0] * 63]}, CodecError, "row 0 has 63 values; the model takes 64 features"),
        ({"inputs": [[0] * 64] * 5}, LimitExceeded, "5 rows; the limit is 4"),
        ({"inputs": []}, CodecError, "at least one row"),
        ({"inputs": [0, 0]}, CodecError, "row 0 is not a list"),
        ({"inputs": [[True] + [0] * 63]}, CodecError, "row 0, value 0 is not a number"),
        ({"inputs": [[0] * 63 + ["1"]]}, CodecError, "row 0, value 63 is not a number"),
        ({"inputs": [[0] * 63 + [1e39]]}, CodecError, "value 63 is not a finite float32"),
        ({"inputs": [[0] * 63 + [10**60]]}, CodecError, "value 63 is not a finite float32"),
        ({"input": [[0] * 64]}, CodecError, "unknown key.*'input'.*valid: id, inputs"),
        ({"id": "x"}, CodecError, "missing 'inputs'"),
        ({"inputs": [[0] * 64], "probabilities": 1}, CodecError, "true or false"),
        ({"inputs": [[0] * 64], "id": [1]}, CodecError, "id must be"),
        ({"inputs": [[0] * 64], "id": "x" * 129}, CodecError, "id must be"),
    ],
)
def test_bad_requests_name_what_is_wrong(
    fields: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        parse_request(fields, num_features=64, limits=LIMITS)


def test_an_int_of_5000_digits_is_not_valid_json() -> None:
    with pytest.raises(CodecError, match="not valid JSON"):
        decode_body(b'{"inputs": [[' + b"1" * 5000 + b"]]}", RequestLimits(max_bytes=6000))


def test_1e999_parses_to_inf_and_is_refused() -> None:
    obj = decode_body(b'{"inputs": [[1e999' + b", 0" * 63 + b"]]}", LIMITS)
    with pytest.raises(CodecError, match="finite"):
        parse_request(obj, num_features=64, limits=LIMITS)


def test_request_limits_and_config_are_checked() -> None:
    with pytest.raises(ConfigError):
        RequestLimits(max_rows=0)
    with pytest.raises(ConfigError):
        ServeConfig(broker="mqtt://127.0.0.1:1", max_request_bytes=10)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        ServeConfig(broker="mqtt://127.0.0.1:1", http="8080")


# -- predictor and replies --------------------------------------------------------------------


def test_the_predictor_answers_like_the_model_built_from_the_flat() -> None:
    flat = _flat(3)
    _, test = load_dataset("digits", seed=0)
    x = test.x[:50].copy()
    classes, probs = Predictor(_job()).predict(flat, x)
    ref = build_model("mlp", num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=0)
    set_flat(ref, flat)
    with torch.no_grad():
        want = torch.softmax(ref(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_array_equal(classes, want.argmax(axis=1))
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)


def test_the_predictor_follows_a_new_flat_vector() -> None:
    predictor, x = Predictor(_job()), np.ones((1, 64), dtype=np.float32)
    a, b = _flat(1), _flat(2)
    pa, pb = predictor.predict(a, x)[1], predictor.predict(b, x)[1]
    assert not np.array_equal(pa, pb)
    np.testing.assert_array_equal(predictor.predict(a, x)[1], pa)


def test_a_job_whose_layout_differs_is_refused() -> None:
    with pytest.raises(ProtocolError, match="layout"):
        Predictor(dataclasses.replace(_job(), layout=(("w", (3, 3)),)))
    with pytest.raises(ProtocolError, match="cannot build model 'gpt'"):
        Predictor(dataclasses.replace(_job(), model="gpt"))


def test_respond_before_a_model_and_after() -> None:
    payload = _request(id=7, inputs=[[0.0] * 64])
    none = respond(payload, None, LIMITS, "waiting for the global model")
    assert none.status == 503
    assert none.body == {"id": 7, "version": None, "error": "no model yet: waiting for the "
                         "global model"}  # fmt: skip
    served = Served(4, _flat(1), Predictor(_job()))
    ok = respond(payload, served, LIMITS, "")
    assert ok.status == 200 and ok.body["version"] == 4 and ok.body["id"] == 7
    assert ok.body["error"] is None and "probabilities" not in ok.body
    assert len(ok.body["predictions"]) == 1 and 0 <= ok.body["predictions"][0] < 10
    bad = respond(_request(id="b", inputs=[[0.0] * 3]), served, LIMITS, "")
    assert bad.status == 400 and bad.body["id"] == "b" and bad.body["version"] == 4
    big = respond(b" " * 5000, served, LIMITS, "")
    assert big.status == 413 and big.body["id"] is None
    assert json.loads(ok.encode()) == ok.body


# -- following versions -----------------------------------------------------------------------


def _chunks(flat: np.ndarray, role: str, version: int, codec: str = "fp32+zstd",
            decoded: np.ndarray | None = None) -> list[bytes]:  # fmt: skip
    return split_vector(
        flat, CodecSpec.parse(codec), max_payload=8192, job=JOB, sender="cloud", role=role,
        round=version + 1, version=version, decoded=decoded,
    )  # fmt: skip


def test_versions_follow_full_models_and_exact_deltas_only() -> None:
    topics = Topics(JOB)
    node = ServeNode(ServeConfig(broker="mqtt://127.0.0.1:1", job=JOB))
    node._on_message(topics.jobspec, encode(_job()))
    v0 = _flat(0)
    parts = _chunks(v0, "model", 0)
    assert len(parts) > 2  # several chunks, so reassembly is exercised
    for i, p in reversed(list(enumerate(parts))):
        node._on_message(topics.model(i), p)
    assert node.model is not None and node.model[0] == 0
    np.testing.assert_array_equal(node.model[1], v0)

    change = (_flat(1) - v0) * np.float32(0.1)
    decoded = np.empty_like(change)
    for i, p in enumerate(_chunks(change, "delta", 1, "int8+zstd", decoded)):
        node._on_message(topics.delta(i), p)
    assert node.model[0] == 1 and node.deltas_applied == 1
    np.testing.assert_array_equal(node.model[1], v0 + decoded)  # exactly what edges hold

    held = node.model
    for i, p in enumerate(_chunks(change, "delta", 3, "int8+zstd")):  # v2 was missed
        node._on_message(topics.delta(i), p)
    assert node.model is held and node.deltas_applied == 1  # a gap: not applied
    v3 = _flat(3)
    for i, p in enumerate(_chunks(v3, "model", 3)):
        node._on_message(topics.model(i), p)
    assert node.model[0] == 3 and node.full_models == 2
    np.testing.assert_array_equal(node.model[1], v3)

    node._on_message(topics.model(0), b"\x00garbage")
    node._on_message(topics.jobspec, b"")  # the job ended: keep serving what we hold
    assert node.malformed == 1 and node.model[0] == 3
    node._on_message(topics.prefix + "/predict/request/me", b"{}")
    assert node._queue.qsize() == 1  # requests go to the workers, not the job logic


def test_the_request_queue_is_bounded() -> None:
    node = ServeNode(ServeConfig(broker="mqtt://127.0.0.1:1", job=JOB, max_queue=2))
    for _ in range(5):
        node._on_message(f"fedmq/{JOB}/predict/request/me", b"{}")
    assert node.dropped == 3
    assert node.report() == ServeReport("serve", 0, 0, 3)


# -- HTTP -------------------------------------------------------------------------------------


def test_http_addresses() -> None:
    assert parse_http_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_http_address("[::1]:8080") == ("::1", 8080)
    for bad in ("8080", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(ConfigError):
            parse_http_address(bad)


async def _read(raw: bytes, max_body: int = 100) -> object:
    reader = asyncio.StreamReader(limit=8 << 10)
    reader.feed_data(raw)
    reader.feed_eof()
    try:
        return await read_request(reader, None, max_body)
    except HttpError as exc:
        return exc.status


async def test_http_requests_are_bounded() -> None:
    ok = await _read(b"POST /predict?x=1 HTTP/1.1\r\nContent-Length: 2\r\nHost: a\r\n\r\n{}")
    assert not isinstance(ok, int)
    assert (ok.method, ok.path, ok.body) == ("POST", "/predict", b"{}")  # type: ignore[attr-defined]
    assert await _read(b"POST /predict HTTP/1.1\r\n\r\n") == 411
    assert await _read(b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") == 411
    assert await _read(b"POST /predict HTTP/1.1\r\nContent-Length: 101\r\n\r\n") == 413
    assert await _read(b"POST /predict HTTP/1.1\r\nContent-Length: -1\r\n\r\n") == 400
    assert await _read(b"POST /predict HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}") == 400
    assert await _read(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n") == 414
    assert await _read(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 65 + b"\r\n") == 431
    assert await _read(b"GET / HTTP/1.1\r\nX: " + b"b" * 9000 + b"\r\n\r\n") == 431
    assert await _read(b"HELLO\r\n\r\n") == 400
    assert await _read(b"GET / HTTP/1.1\r\nno colon\r\n\r\n") == 400


# -- CLI --------------------------------------------------------------------------------------


def test_the_serve_command_is_registered_and_helps(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["serve", "--broker", "mqtt://127.0.0.1:1883", "--job", "j", "--http", "127.0.0.1:0"]
    )
    assert args.func is cmd_serve and args.http == "127.0.0.1:0" and args.max_rows == 1024
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for text in ("predict/request", "POST /predict", "GET /healthz", '"version"', "mosquitto_pub"):
        assert text in out
