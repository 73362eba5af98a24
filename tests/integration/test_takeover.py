"""Client ids are bound to identities (issue 12, item 2): a valid identity that connects with
another node's client id must not take that node's connection over, on either broker."""

import asyncio
import contextlib
from pathlib import Path

import pytest

from fedmq.broker.auth import id_owner
from fedmq.errors import TransportError
from fedmq.transport import Session, SessionConfig
from tests.conftest import BrokerThread, wait_until
from tests.integration.test_security import (  # noqa: F401 (fixtures used by name)
    amqtt_secure,
    files,
    mosquitto_secure,
    node,
    secure,
)

pytestmark = pytest.mark.integration

J = "fedmq/j"
Got = list[tuple[str, bytes]]


def test_a_client_id_belongs_to_the_identity_it_ends_with() -> None:
    users = ["cloud", "edge-1", "1", "edge-11"]
    assert id_owner("digits-cloud", users) == "cloud"
    assert id_owner("cloud", users) == "cloud"
    assert id_owner("digits-edge-1", users) == "edge-1"  # the longest name, not "1"
    assert id_owner("digits-edge-11", users) == "edge-11"
    assert id_owner("x-1", users) == "1"
    assert id_owner("fedmq-edge-check-4242", users) is None  # the CLI's pre-connect check
    assert id_owner("digits-cloudy", users) is None


async def test_another_identity_cannot_take_over_the_clouds_client_id(
    files: Path,  # noqa: F811
    secure: tuple[str, BrokerThread | None],  # noqa: F811
) -> None:
    url, broker = secure
    got: Got = []
    cloud_cfg = node(files, url, "cloud", subscriptions=(f"{J}/update/+",))
    assert cloud_cfg.client_id == "j-cloud"
    # edge-1's valid credentials and certificate, the cloud's client id.
    thief_cfg = SessionConfig(**{**vars(node(files, url, "edge-1")), "client_id": "j-cloud",
                                 "connect_timeout": 3, "backoff_max": 0.5})  # fmt: skip
    async with (
        Session(cloud_cfg, lambda t, p: got.append((t, p))) as cloud,
        Session(node(files, url, "edge-0"), lambda t, p: None) as edge0,
    ):
        for _ in range(3):
            thief = Session(thief_cfg, lambda t, p: None)
            if broker is not None:
                # The embedded broker refuses the CONNECT before amqtt acts on it.
                with pytest.raises(TransportError, match="refused"):
                    await thief.__aenter__()
            else:
                # Mosquitto replaces the client id by the username (use_username_as_clientid):
                # the thief connects, as edge-1, and the cloud stays.
                async with thief:
                    await edge0.publish(f"{J}/update/edge-0", b"during")
                    await wait_until(lambda: (f"{J}/update/edge-0", b"during") in got)
        await asyncio.sleep(0.5)  # a kick would show as a reconnect by now
        await edge0.publish(f"{J}/update/edge-0", b"after")
        await wait_until(lambda: (f"{J}/update/edge-0", b"after") in got)
        assert cloud.reconnects == 0 and cloud.connected
    if broker is not None:
        assert broker.broker is not None and broker.broker._gate is not None
        assert broker.broker._gate.refused == 3


async def test_an_anonymous_or_unknown_client_cannot_take_over_either(
    files: Path,  # noqa: F811
    amqtt_secure: BrokerThread,  # noqa: F811
) -> None:
    """amqtt 0.12.1 dropped the id's session *before* its auth plugin refused a bad password:
    the cloud stayed connected but received nothing. The gate runs first."""
    assert amqtt_secure.broker is not None
    url = amqtt_secure.broker.url
    got: Got = []
    cloud_cfg = node(files, url, "cloud", subscriptions=(f"{J}/update/+",))
    async with (
        Session(cloud_cfg, lambda t, p: got.append((t, p))) as cloud,
        Session(node(files, url, "edge-0"), lambda t, p: None) as edge0,
    ):
        for user, pw in ((None, None), ("edge-1", "wrong"), ("nobody", "x")):
            base = node(files, url, user, pw=pw, connect_timeout=3)
            thief = Session(SessionConfig(**{**vars(base), "client_id": "j-cloud"}),
                            lambda t, p: None)  # fmt: skip
            with pytest.raises(TransportError, match="refused"):
                async with thief:
                    pass
        await edge0.publish(f"{J}/update/edge-0", b"after")
        await wait_until(lambda: got == [(f"{J}/update/edge-0", b"after")])
        assert cloud.reconnects == 0


async def test_the_same_identity_may_take_its_own_id_back(
    files: Path,  # noqa: F811
    amqtt_secure: BrokerThread,  # noqa: F811
) -> None:
    """A node restarted while its old connection is half-open must get its id back."""
    assert amqtt_secure.broker is not None
    url = amqtt_secure.broker.url
    old = Session(node(files, url, "edge-0", backoff_min=5), lambda t, p: None)
    await old.__aenter__()
    try:
        async with Session(node(files, url, "edge-0"), lambda t, p: None) as new:
            await new.publish(f"{J}/update/edge-0", b"back")
    finally:
        with contextlib.suppress(Exception):
            await old._stop()


def test_broker_config_binds_client_ids_on_its_listener(files: Path) -> None:  # noqa: F811
    import argparse

    from fedmq.cli.brokerconf import render

    args = argparse.Namespace(
        port=8883, host="127.0.0.1", password_file=str(files / "passwd"), acl_file=None,
        allow_anonymous=False, tls_cert=None, tls_key=None, tls_ca=None,
    )  # fmt: skip
    lines = render(args).splitlines()
    # After the listener line: before it, Mosquitto would open a default listener on 1883.
    assert lines.index("use_username_as_clientid true") > lines.index("listener 8883 127.0.0.1")
    shipped = Path(__file__).parents[2] / "src/fedmq/broker/configs/mosquitto-secure.conf"
    lines = shipped.read_text().splitlines()
    listener = next(i for i, line in enumerate(lines) if line.startswith("listener "))
    assert lines.index("use_username_as_clientid true") > listener
