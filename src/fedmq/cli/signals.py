"""SIGTERM as a clean stop: the node's `async with` blocks unwind, so its session publishes the
goodbye (a retained "offline" status) and the cloud stops waiting for it at once, instead of
the broker publishing the will a moment later or, on a half-open socket, a keepalive later."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Stopped(Exception):
    """The process was asked to stop (SIGTERM or Ctrl-C) and unwound cleanly."""

    def __init__(self, signame: str) -> None:
        super().__init__(f"stopped by {signame}")
        self.signame = signame


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, with SIGTERM and SIGINT cancelling `main` rather than killing us."""

    async def guarded() -> T:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        got: list[str] = []

        def stop(sig: signal.Signals) -> None:
            got.append(sig.name)
            task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop, sig)
        try:
            return await task
        except asyncio.CancelledError:
            if got:
                raise Stopped(got[0]) from None
            raise
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)

    return asyncio.run(guarded())
