"""The embedded broker's CONNECT parsing and client-id binding (broker.auth), without a socket."""

import asyncio
from pathlib import Path

import pytest

from fedmq.broker.auth import BAD_CREDENTIALS, NOT_AUTHORISED, Connect, ConnectGate, parse_connect
from fedmq.errors import ProtocolError
from fedmq.security import PasswordFile, set_password

pytestmark = pytest.mark.unit


def field(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


def connect(client_id: str, user: str | None, pw: str | None, will: str | None = None,
            level: int = 4) -> bytes:  # fmt: skip
    flags = 0x02 | (0x04 if will else 0) | (0x80 if user else 0) | (0x40 if pw else 0)
    body = field("MQTT") + bytes([level, flags, 0, 20]) + field(client_id)
    body += field(will) + field("bye") if will else b""
    body += (field(user) if user else b"") + (field(pw) if pw else b"")
    return bytes([0x10, len(body)]) + body


def test_parse_connect_reads_the_names() -> None:
    got = parse_connect(connect("digits-edge-0", "edge-0", "secret", will="fedmq/d/status/edge-0"))
    assert got == Connect("digits-edge-0", "edge-0", "secret", "fedmq/d/status/edge-0")
    assert parse_connect(connect("x", None, None)) == Connect("x", None, None, None)


@pytest.mark.parametrize(
    "packet",
    [connect("x", "u", "p", level=5), connect("x", "u", "p")[:-3], bytes([0x30, 0]), b""],
)
def test_parse_connect_refuses_what_it_cannot_read(packet: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_connect(packet)


def test_the_gate_binds_ids_and_checks_passwords(tmp_path: Path) -> None:
    for user in ("cloud", "edge-1"):
        set_password(tmp_path / "passwd", user, f"pw of {user}", iterations=1000)
    held = {"tool-1": "cloud"}
    gate = ConnectGate(PasswordFile(tmp_path / "passwd"), None, False, held.get)

    def judge(client_id: str, user: str | None, pw: str | None = None) -> int | None:
        c = Connect(client_id, user, pw or (f"pw of {user}" if user else None), None)
        return asyncio.run(gate.refusal(c))

    assert judge("digits-cloud", "cloud") is None
    assert judge("digits-cloud", "edge-1") == NOT_AUTHORISED
    assert judge("digits-cloud", "cloud", "wrong") == BAD_CREDENTIALS
    assert judge("digits-cloud", None) == NOT_AUTHORISED
    assert judge("fedmq-edge-check-42", "edge-1") is None  # the CLI's pre-connect check
    assert judge("tool-1", "edge-1") == NOT_AUTHORISED  # held by a connected cloud
    assert judge("tool-1", "cloud") is None  # its own id back
    assert gate.refused == 4  # each refusal above, counted once
