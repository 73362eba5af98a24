"""TCP_NODELAY on every TCP socket fedmq opens or accepts.

A round is a chain of small messages (PUBACKs, the task, the summary), each waiting for the one
before. With Nagle on, a small write waits for the ACK of the previous one, which Linux delays
up to 40 ms: on loopback that is more than the rest of a round.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any


def set_nodelay(sock: Any) -> None:
    """Turn Nagle off on a TCP socket, or asyncio's wrapper of one (others are left alone)."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def stream_nodelay(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY on an asyncio stream's socket.

    asyncio's selector transports already set it on TCP sockets (CPython >= 3.6); saying so
    here keeps it true whatever the event loop, and makes the intent visible where it matters.
    """
    set_nodelay(writer.get_extra_info("socket"))
