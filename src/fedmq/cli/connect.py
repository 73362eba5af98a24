"""Reach the broker before a node starts: say where it connects, report while it cannot.

A node started against a broker that is not there used to sit silent for 30-60 s and then
fail with a traceback; the cloud even said it was waiting for edges. Every node command now
connects once here first (same URL, credentials and TLS files as the node), printing
"connecting to URL ..." at once and "still no connection to URL after N s (reason)" every few
seconds, and gives up after --connect-timeout with one line: exit code 2, like any other
input that keeps the command from starting. The node then opens its own session.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from fedmq.errors import TransportError

PROGRESS_EVERY = 5.0  # seconds between "still no connection" lines


def reach_broker(
    command: str,
    url: str,
    identity: Mapping[str, Any],
    timeout: float,
    *,
    progress_every: float = PROGRESS_EVERY,
) -> None:
    """Return once `url` accepts an MQTT connection with `identity`; TransportError if not."""
    from fedmq.transport import Session, SessionConfig

    # Progress goes to stdout with the command's other progress lines; stderr is kept for the
    # one line that says why the command stopped.
    print(f"fedmq {command}: connecting to {url} ...", flush=True)
    # Never the id a node will take (the broker would drop that node); no blanks either.
    client_id = f"fedmq-{command.split(maxsplit=1)[0]}-check-{os.getpid()}"
    config = SessionConfig(
        url=url,
        client_id=client_id,
        connect_timeout=timeout,
        progress_every=progress_every,
        backoff_max=min(2.0, progress_every),  # retry often: the broker may be starting too
        **identity,
    )

    def on_wait(message: str) -> None:
        print(f"fedmq {command}: {message}", flush=True)

    async def connect() -> None:
        async with Session(config, lambda topic, payload: None, on_wait=on_wait):
            pass

    try:
        asyncio.run(connect())
    except TransportError as exc:
        # The check's own client id means nothing to the user; the URL and reason do.
        raise TransportError(str(exc).removeprefix(f"{client_id}: ")) from None
    print(f"fedmq {command}: connected to {url}", flush=True)
