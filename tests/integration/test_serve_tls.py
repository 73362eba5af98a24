"""`fedmq serve` joins the secure deployment (issue 12, item 6): the same identity and TLS flags
as `cloud` and `edge`, against a TLS + password + ACL broker (embedded and Mosquitto), and it
answers a prediction there."""

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmq.codec import CodecSpec, JobSpec, encode, split_vector
from fedmq.security import set_password
from fedmq.security.certs import make_trial_pki
from fedmq.serve_node.api import request_topic, response_topic
from fedmq.transport import Session, Topics
from fedmq.workloads import build_model, get_flat, layout, load_dataset
from tests.conftest import BrokerThread
from tests.integration.test_security import (  # noqa: F401 (fixtures used by name)
    CONFIGS,
    amqtt_secure,
    mosquitto_secure,
    node,
    password,
    secure,
)

pytestmark = pytest.mark.integration

USERS = ("cloud", "edge-0", "serve")
JOB = "tls"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As test_security's, with the ACL's `serve` user and a certificate for it."""
    d = tmp_path_factory.mktemp("fedmq-etc-serve")
    make_trial_pki(d / "certs", USERS)
    for user in USERS:
        set_password(d / "passwd", user, password(user), iterations=1000)
    shutil.copy(CONFIGS / "fedmq.acl", d / "fedmq.acl")
    return d


async def publish_job_and_model(files: Path, url: str) -> np.ndarray:
    """What the cloud publishes, retained, under its own identity: the job and the model."""
    net = build_model("mlp", num_features=64, num_classes=10, feature_shape=(1, 8, 8), seed=0)
    flat, topics = get_flat(net), Topics(JOB)
    spec = JobSpec(
        job=JOB, model="mlp", dataset="digits", partition="iid", clients=1, seed=0,
        codec="fp32+zstd", max_payload=16384, layout=layout(net),
    )  # fmt: skip
    chunks = split_vector(
        flat, CodecSpec.parse("fp32+zstd"), max_payload=16384, job=JOB, sender="cloud",
        role="model", round=1, version=0,
    )  # fmt: skip
    async with Session(node(files, url, "cloud"), lambda t, p: None) as cloud:
        await cloud.publish(topics.jobspec, encode(spec), retain=True)
        await cloud.publish_all([(topics.model(i), p) for i, p in enumerate(chunks)], retain=True)
    return flat


async def test_serve_answers_over_tls_with_a_password_and_a_certificate(
    files: Path,
    secure: tuple[str, BrokerThread | None],  # noqa: F811
) -> None:
    url, _ = secure
    await publish_job_and_model(files, url)
    certs = files / "certs"
    argv = [
        sys.executable, "-m", "fedmq.cli.main", "serve", "--broker", url, "--job", JOB,
        "--username", "serve", "--tls-ca", str(certs / "ca.pem"),
        "--tls-cert", str(certs / "serve.pem"), "--tls-key", str(certs / "serve.key"),
        "--connect-timeout", "20",
    ]  # fmt: skip
    env = {**os.environ, "FEDMQ_PASSWORD": password("serve")}
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=pipe, stderr=pipe)
    replies: list[dict[str, Any]] = []
    topics = Topics(JOB)
    asker = node(files, url, "edge-0", subscriptions=(response_topic(topics, "edge-0"),))
    try:
        async with Session(asker, lambda t, p: replies.append(json.loads(p))) as edge:
            _, test = load_dataset("digits", seed=0)
            request = json.dumps({"id": "r1", "inputs": test.x[:3].tolist()}).encode()

            async def answered() -> bool:
                # Until serve is up and holds the model, a request gets no answer (or an
                # error saying there is no model yet): ask again.
                await edge.publish(request_topic(topics, "edge-0"), request)
                await asyncio.sleep(0.5)
                return any(r.get("version") == 0 and not r.get("error") for r in replies)

            for _ in range(120):
                if proc.returncode is not None or await answered():
                    break
            assert proc.returncode is None, "fedmq serve exited (its stderr is below)"
            reply = next(r for r in replies if r.get("version") == 0 and not r.get("error"))
            assert reply["id"] == "r1" and len(reply["predictions"]) == 3
    finally:
        if proc.returncode is None:
            proc.terminate()
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        print(err.decode())  # pytest shows it when the test fails
    assert f"connected to {url}" in out.decode(), err.decode()
