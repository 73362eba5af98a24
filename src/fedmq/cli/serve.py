"""`fedmq serve`: answer predictions with a job's latest global model, over MQTT (and HTTP)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Any

DESCRIPTION = """\
Follow a job's global model as the cloud publishes it (the retained full model, then each
round's delta) and answer predictions with the newest version. Every answer says which
version produced it. Requests are JSON:

  {"id": "r1", "inputs": [[x0, x1, ...], ...], "probabilities": false}

and the answer is

  {"id": "r1", "version": 7, "predictions": [3, ...], "error": null}

or {"id": "r1", "version": 7, "error": "why"} for a request that fails a check. Each row
of "inputs" is one sample with as many numbers as the model has features (digits: 64, the
8x8 pixels scaled to [0, 1]). "id" (a string or integer) is echoed back."""

EPILOG = """\
examples:
  fedmq serve --broker mqtt://127.0.0.1:1883 --job digits --http 127.0.0.1:8080

  # a secure deployment (docs/security.md): the ACL's serve user, TLS, a client certificate
  FEDMQ_PASSWORD=... fedmq serve --broker mqtts://localhost:8883 --username serve \\
       --tls-ca certs/ca.pem --tls-cert certs/serve.pem --tls-key certs/serve.key

  # over MQTT: replies go to fedmq/JOB/predict/response/CLIENT for requests on .../request/CLIENT
  mosquitto_sub -t fedmq/digits/predict/response/me &
  mosquitto_pub -t fedmq/digits/predict/request/me -m '{"id": "1", "inputs": [[0, 0, ...]]}'

  # over HTTP
  curl -s localhost:8080/healthz
  curl -s -X POST localhost:8080/predict -H 'Content-Type: application/json' \\
       -d '{"id": "1", "inputs": [[0, 0, ...]], "probabilities": true}'

The password may also come from the FEDMQ_PASSWORD environment variable."""


def add_parser(sub: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """The parser; `cli.main` adds the identity and TLS flags every node command shares."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="answer predictions with the latest global model (MQTT, optional HTTP)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT of the job's broker")
    p.add_argument("--job", default="digits", help="job name (default digits)")
    p.add_argument(
        "--id", default="serve", help="node name; the MQTT client id is JOB-ID (default serve)"
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        default="",
        help="also serve POST /predict and GET /healthz over HTTP here, e.g. 127.0.0.1:8080 "
        "(port 0: any free); keep it on loopback, there is no authentication",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=1 << 20,
        metavar="N",
        help="largest request accepted, bytes (default 1048576)",
    )
    p.add_argument(
        "--max-rows",
        type=int,
        default=1024,
        metavar="N",
        help="most samples in one request (default 1024)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads for inference (default 1)")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the broker at start, reporting every 5 s; then exit with "
        "code 2 (default 30)",
    )
    p.set_defaults(func=cmd_serve)
    return p


def check(args: argparse.Namespace) -> None:
    """Every option, before torch loads or a socket opens."""
    from fedmq.cli import checks, options
    from fedmq.errors import ConfigError

    checks.broker_url(args.broker)
    checks.topic_name("--job", args.job)
    checks.topic_name("--id", args.id)
    checks.at_least("--max-request-bytes", args.max_request_bytes, 1)
    checks.at_least("--max-rows", args.max_rows, 1)
    checks.at_least("--threads", args.threads, 1)
    options.identity(args)  # TLS files readable, --connect-timeout > 0
    if args.http:
        # serve_node.httpd.parse_http_address's rule; importing it would import torch first.
        host, sep, port = args.http.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                f"--http {args.http!r}: give HOST:PORT, e.g. 127.0.0.1:8080 (port 0: any)"
            )


def cmd_serve(args: argparse.Namespace) -> int:
    from fedmq.cli.connect import reach_broker

    check(args)
    password = args.password if args.password is not None else os.environ.get("FEDMQ_PASSWORD")
    identity = {"username": args.username, "password": password, "tls_ca": args.tls_ca,
                "tls_cert": args.tls_cert, "tls_key": args.tls_key}  # fmt: skip
    reach_broker("serve", args.broker, identity, args.connect_timeout)

    import torch

    from fedmq.serve_node import ServeConfig, ServeNode, ServeReport
    from fedmq.serve_node.api import request_all, response_topic

    torch.set_num_threads(max(1, args.threads))
    config = ServeConfig(
        broker=args.broker,
        job=args.job,
        node_id=args.id,
        http=args.http,
        **identity,
        max_request_bytes=args.max_request_bytes,
        max_rows=args.max_rows,
    )

    def on_version(version: int, model: str) -> None:
        print(f"serving version {version} ({model})", flush=True)

    def on_http(url: str) -> None:
        print(f"HTTP on {url} (POST /predict, GET /healthz)", flush=True)

    node = ServeNode(config, on_version=on_version, on_http=on_http)

    async def serve() -> ServeReport:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, node.stop)
        return await node.run()

    print(
        f"fedmq serve: job {args.job} on {args.broker}; requests on "
        f"{request_all(node.topics)}, answers on {response_topic(node.topics, 'CLIENT')} "
        "(Ctrl-C to stop)",
        flush=True,
    )
    report = asyncio.run(serve())
    print(
        f"served {report.requests} requests ({report.errors} errors, {report.dropped} dropped); "
        f"last version {report.versions[-1] if report.versions else 'none'}"
    )
    return 0
