"""`fedmq serve` on the embedded broker: it follows a real job and answers over MQTT and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import numpy as np
import pytest
import torch

from fedmq.cloud_node import CloudConfig, CloudNode
from fedmq.codec import CodecSpec, JobSpec, TensorChunk, assemble, decode, encode, split_vector
from fedmq.edge_node import EdgeConfig, EdgeNode
from fedmq.serve_node import ServeConfig, ServeNode, ServeReport
from fedmq.serve_node.api import request_topic, response_topic
from fedmq.transport import Session, SessionConfig, Topics
from fedmq.workloads import build_model, get_flat, layout, load_dataset, set_flat
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def reference(flat: np.ndarray, x: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Classes and probabilities of the digits MLP built from `flat`, computed here."""
    model = build_model("mlp", num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=0)
    set_flat(model, flat)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x.copy())), dim=1).numpy()
    return probs.argmax(axis=1).tolist(), probs


def samples(n: int) -> np.ndarray:
    _, test = load_dataset("digits", seed=0)
    return test.x[:n].copy()


class Client:
    """A test MQTT client: publishes requests, one at a time, and returns the reply to each."""

    def __init__(self, url: str, job: str, name: str = "tester") -> None:
        self.topics, self.name = Topics(job), name
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        reply_topic = response_topic(self.topics, name)

        def on_message(topic: str, payload: bytes) -> None:
            if topic == reply_topic:
                self.replies.put_nowait(json.loads(payload))

        cfg = SessionConfig(url, f"{job}-{name}", subscriptions=(reply_topic,))
        self.session = Session(cfg, on_message)

    async def __aenter__(self) -> Client:
        await self.session.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.session.__aexit__(et, e, tb)

    async def ask(self, payload: bytes) -> dict[str, Any]:
        await self.session.publish(request_topic(self.topics, self.name), payload)
        return await asyncio.wait_for(self.replies.get(), 15)

    async def publish_model(self, version: int, flat: np.ndarray, *, job: bool = True) -> None:
        """What a cloud publishes for a job: the JobSpec and the full model, retained."""
        if job:
            net = build_model(
                "mlp", num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=0
            )
            spec = JobSpec(
                job=self.topics.job, model="mlp", dataset="digits", partition="iid", clients=1,
                seed=0, codec="fp32+zstd", max_payload=16384, layout=layout(net),
            )  # fmt: skip
            await self.session.publish(self.topics.jobspec, encode(spec), retain=True)
        chunks = split_vector(
            flat, CodecSpec.parse("fp32+zstd"), max_payload=16384, job=self.topics.job,
            sender="cloud", role="model", round=version + 1, version=version,
        )  # fmt: skip
        await self.session.publish_all(
            [(self.topics.model(i), p) for i, p in enumerate(chunks)], retain=True
        )

    async def publish_delta(self, version: int, change: np.ndarray) -> np.ndarray:
        """A lossy delta to `version`, as the cloud sends it; returns what receivers decode."""
        decoded = np.empty_like(change)
        chunks = split_vector(
            change, CodecSpec.parse("int8+zstd"), max_payload=16384, job=self.topics.job,
            sender="cloud", role="delta", round=version + 1, version=version, decoded=decoded,
        )  # fmt: skip
        await self.session.publish_all([(self.topics.delta(i), p) for i, p in enumerate(chunks)])
        return decoded


@contextlib.asynccontextmanager
async def serving(node: ServeNode) -> AsyncIterator[ServeNode]:
    task = asyncio.create_task(node.run())
    try:
        await wait_until(lambda: node.connected or task.done(), 15)
        if task.done():
            task.result()  # raises what went wrong
        yield node
    finally:
        node.stop()
        await asyncio.wait_for(task, 15)


async def retained_model(url: str, job: str) -> tuple[int, np.ndarray]:
    """The full model the broker holds retained for the job, read by a fresh client."""
    topics = Topics(job)
    chunks: dict[int, TensorChunk] = {}

    def on_message(topic: str, payload: bytes) -> None:
        # amqtt may deliver a retained message twice, and others besides: keep model chunks.
        if payload and topic.startswith(topics.prefix + "/model/"):
            chunk = decode(payload, expect=TensorChunk)
            chunks[chunk.index] = chunk

    def complete() -> bool:
        return bool(chunks) and len(chunks) == next(iter(chunks.values())).count

    cfg = SessionConfig(url, f"{job}-reader", subscriptions=(topics.model_all,))
    async with Session(cfg, on_message):
        await wait_until(complete, 15)
    flat = assemble(list(chunks.values()))
    return chunks[0].version, flat


async def test_serve_follows_a_real_job_and_answers_with_the_published_model(
    amqtt_url: str,
) -> None:
    """After the run, answers come from the newest model the cloud published, bit for bit.

    That is the cloud's view (what edges hold: the int8 deltas applied in turn), not
    `CloudResult.final_flat`. The cloud only ever publishes the model a round *starts* from,
    so the last round's aggregate (version `result.version`) never reaches the wire today:
    the newest published version is `result.version - 1`.
    """
    job = "serve-run"
    cloud = CloudNode(
        CloudConfig(
            broker=amqtt_url, job=job, clients=2, rounds=4, local_epochs=1, round_timeout=30
        )
    )
    edges = [EdgeNode(EdgeConfig(broker=amqtt_url, node_id=f"edge-{i}", job=job)) for i in range(2)]
    seen: list[int] = []
    node = ServeNode(
        ServeConfig(broker=amqtt_url, job=job, http="127.0.0.1:0"),
        on_version=lambda version, model: seen.append(version),
    )
    async with serving(node):
        async with asyncio.TaskGroup() as tg:
            for edge in edges:
                tg.create_task(edge.run())
            result = await tg.create_task(cloud.run())
        version, flat = await retained_model(amqtt_url, job)
        # Today the model round 4 started from; `result.version` once the cloud publishes it.
        assert version in (result.version - 1, result.version)
        await wait_until(lambda: node.version == version, 20)
        held = node.model
        assert held is not None
        np.testing.assert_array_equal(held[1], flat)
        for edge in edges:  # the serve node holds exactly what the edges hold
            assert edge._model is not None and edge._model[0] == version
            np.testing.assert_array_equal(edge._model[1], flat)
        # It followed the job version by version, mostly by applying deltas.
        assert seen == sorted(seen) and seen[0] == 0 and seen[-1] == version
        assert node.deltas_applied >= 1

        x = samples(40)
        want, probs = reference(flat, x)
        request = {"id": "after-run", "inputs": x.tolist(), "probabilities": True}
        async with Client(amqtt_url, job) as client:
            reply = await client.ask(json.dumps(request).encode())
        assert reply["error"] is None and reply["id"] == "after-run"
        assert reply["version"] == version
        assert reply["predictions"] == want
        np.testing.assert_allclose(reply["probabilities"], probs, rtol=1e-5, atol=1e-6)
        # The last aggregate, one round on, still mostly agrees with what is served.
        final, _ = reference(result.final_flat, x)
        assert np.mean(np.array(final) == np.array(want)) >= 0.7
    report = node.report()
    assert report.requests == 1 and report.errors == 0 and report.versions[-1] == version


def mlp_flat(seed: int) -> np.ndarray:
    net = build_model("mlp", num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=seed)
    return get_flat(net)


async def test_serve_applies_exact_deltas_and_refetches_the_full_model_after_a_gap(
    amqtt_url: str,
) -> None:
    job = "serve-gap"
    node = ServeNode(ServeConfig(broker=amqtt_url, job=job))
    v0 = mlp_flat(0)
    async with serving(node), Client(amqtt_url, job) as client:
        await client.publish_model(0, v0)
        await wait_until(lambda: node.version == 0, 15)
        change = (mlp_flat(1) - v0) * np.float32(0.1)
        decoded = await client.publish_delta(1, change)
        await wait_until(lambda: node.version == 1, 15)
        held = node.model
        assert held is not None
        np.testing.assert_array_equal(held[1], v0 + decoded)  # int8 values, as edges hold them

        # Version 2 never reaches us; the cloud has moved to 3 (retained) and sends 2 -> 3.
        v3 = mlp_flat(3)
        await client.publish_model(3, v3, job=False)
        await client.publish_delta(3, change)  # does not apply on top of 1
        await wait_until(lambda: node.version == 3, 15)
        held = node.model
        assert held is not None
        np.testing.assert_array_equal(held[1], v3)  # the full model, fetched after the gap
        x = samples(4)
        reply = await client.ask(json.dumps({"id": 1, "inputs": x.tolist()}).encode())
        assert reply["version"] == 3 and reply["predictions"] == reference(v3, x)[0]
    assert node.deltas_applied == 1 and node.full_models == 2
    assert node.report().versions == (0, 1, 3)


async def test_bad_requests_get_error_replies_and_the_node_keeps_answering(
    amqtt_url: str,
) -> None:
    job = "serve-bad"
    node = ServeNode(ServeConfig(broker=amqtt_url, job=job, max_request_bytes=8192, max_rows=8))
    x = samples(3)
    good = json.dumps({"id": "ok", "inputs": x.tolist()}).encode()
    async with serving(node), Client(amqtt_url, job) as client:
        early = await client.ask(good)
        assert early["id"] == "ok" and early["version"] is None
        assert early["error"].startswith("no model yet")

        flat = mlp_flat(5)
        await client.publish_model(7, flat)
        await wait_until(lambda: node.version == 7, 15)

        row = [0.0] * 64
        cases: list[tuple[bytes, Any, str]] = [
            (b"{not json", None, "not valid JSON"),
            (b"", None, "empty request"),
            (b"[1, 2, 3]", None, "must be a JSON object"),
            (json.dumps({"id": "short", "inputs": [[1.0] * 10]}).encode(), "short",
             "row 0 has 10 values; the model takes 64 features"),
            (json.dumps({"id": "big", "inputs": [row] * 200}).encode(), None,
             "bytes; the limit is 8192"),
            (json.dumps({"id": "rows", "inputs": [[0] * 64] * 9}).encode(), "rows",
             "9 rows; the limit is 8"),
            (b'{"id": "nan", "inputs": [[NaN' + b", 0" * 63 + b"]]}", None,
             "NaN is not a JSON number"),
            (b'{"id": 3, "inputs": [[1e999' + b", 0" * 63 + b"]]}", 3, "not a finite"),
            (json.dumps({"id": "key", "input": [row]}).encode(), "key", "unknown key"),
        ]  # fmt: skip
        for payload, rid, message in cases:
            reply = await client.ask(payload)
            assert reply["error"] is not None and message in reply["error"], reply
            assert reply["id"] == rid and reply["version"] == 7
            assert "predictions" not in reply
        reply = await client.ask(good)  # still answering, and right
        assert reply["error"] is None and reply["version"] == 7
        assert reply["predictions"] == reference(flat, x)[0]
        assert node._session is not None and node._session.reconnects == 0
    assert node.report() == ServeReport("serve", len(cases) + 2, len(cases) + 1, 0, (7,), 1)


async def _http(port: int, raw: bytes) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 15)  # the server closes after answering
    finally:
        writer.close()
    if data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
        data = data[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head and b"Connection: close" in head
    return int(head.split()[1]), json.loads(body)


def _post(body: bytes, extra: str = "") -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def test_http_answers_predict_and_healthz(amqtt_url: str) -> None:
    job = "serve-http"
    node = ServeNode(
        ServeConfig(broker=amqtt_url, job=job, http="127.0.0.1:0", max_request_bytes=65536)
    )
    x = samples(5)
    good = json.dumps({"id": "h", "inputs": x.tolist(), "probabilities": True}).encode()
    async with serving(node), Client(amqtt_url, job) as client:
        assert node.http is not None
        port = node.http.address[1]
        status, body = await _http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (503, {"version": None, "model": None, "job": job})
        status, body = await _http(port, _post(good))
        assert status == 503 and body["error"].startswith("no model yet")

        flat = mlp_flat(9)
        await client.publish_model(3, flat)
        await wait_until(lambda: node.version == 3, 15)

        status, body = await _http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (200, {"version": 3, "model": "mlp", "job": job})
        want, probs = reference(flat, x)
        status, body = await _http(port, _post(good, "Expect: 100-continue\r\n"))
        assert status == 200 and body["version"] == 3 and body["id"] == "h"
        assert body["predictions"] == want and body["error"] is None
        np.testing.assert_allclose(body["probabilities"], probs, rtol=1e-5, atol=1e-6)

        # A stock client (urllib) gets the same answer.
        def fetch() -> dict[str, Any]:
            req = urllib.request.Request(
                f"{node.http.url}/predict" if node.http else "", data=good,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(req, timeout=15) as response:
                out: dict[str, Any] = json.loads(response.read())
                return out

        assert (await asyncio.to_thread(fetch))["predictions"] == want

        status, body = await _http(port, _post(b"{oops"))
        assert status == 400 and "not valid JSON" in body["error"] and body["version"] == 3
        status, body = await _http(port, _post(json.dumps({"inputs": [[1, 2]]}).encode()))
        assert status == 400 and "64 features" in body["error"]
        status, body = await _http(
            port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n"
        )
        assert status == 413 and "limit is 65536" in body["error"]
        status, _ = await _http(port, b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 411
        status, _ = await _http(port, b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 405
        status, _ = await _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 404
        status, _ = await _http(port, b"GARBAGE\r\n\r\n")
        assert status == 400
        status, body = await _http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and body["version"] == 3  # still up
