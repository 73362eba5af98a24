"""SIGTERM unwinds a node cleanly (its goodbye is sent from the `async with` exits)."""

import asyncio
import os
import signal

import pytest

from fedmq.cli.signals import Stopped, run

pytestmark = pytest.mark.unit


def test_sigterm_cancels_the_main_coroutine_and_its_cleanup_runs() -> None:
    cleaned: list[str] = []

    async def node() -> int:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append("goodbye")
        return 0

    with pytest.raises(Stopped, match="SIGTERM"):
        run(node())
    assert cleaned == ["goodbye"]
    # The handler is gone afterwards: the default disposition is back.
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)


def test_a_normal_return_passes_through() -> None:
    async def node() -> int:
        return 7

    assert run(node()) == 7
