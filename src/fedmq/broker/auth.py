"""The embedded broker's gate: a password file, a topic ACL and client ids bound to identities.

amqtt publishes a client's will without any topic check, so the auth plugin refuses a
connection whose will topic the ACL does not let that client write (Mosquitto checks it too).
Denials are logged with the username and topic, never the password.

Client ids are bound to identities (issue 12): `ConnectGate` checks each CONNECT *before* amqtt
sees it, because amqtt 0.12.1 acts on a clean-session CONNECT before its auth plugins run: it
deletes the session (and subscriptions) held under that client id and files the newcomer's in
its place, so even a refused CONNECT with the cloud's id left the cloud connected but deaf.
The rule: a client id that names an identity (`NAME` or `ANYTHING-NAME`, NAME a user of the
password file; fedmq's nodes use `<job>-<node id>` and their node id is their username) may
be used only by that identity, and a client id held by a connected client may be taken over
only by the same username. Other ids (fedmq's own pre-connect check `fedmq-edge-check-PID`,
third-party tools) stay free for any authenticated client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from fedmq.errors import ProtocolError
from fedmq.security import READ, WRITE, Acl, PasswordFile

log = logging.getLogger(__name__)

# CONNACK return codes of MQTT 3.1.1 (a 3.1.1 CONNACK is 0x20 0x02, session present 0, code).
BAD_CREDENTIALS, NOT_AUTHORISED = 4, 5


@dataclass(frozen=True)
class Connect:
    """What the gate needs from a CONNECT packet (MQTT 3.1 and 3.1.1; 5 is refused by amqtt)."""

    client_id: str
    username: str | None
    password: str | None
    will_topic: str | None


def parse_connect(packet: bytes) -> Connect:
    """A whole CONNECT packet (fixed header included) -> its names; ProtocolError if malformed."""
    if not packet or packet[0] >> 4 != 1:
        raise ProtocolError("first packet is not a CONNECT")
    i = 1
    while i < len(packet) and packet[i] & 0x80:  # the remaining-length varint
        i += 1
    i += 1

    def take() -> bytes:
        nonlocal i
        if i + 2 > len(packet):
            raise ProtocolError("CONNECT ends inside a field")
        n = int.from_bytes(packet[i : i + 2], "big")
        if i + 2 + n > len(packet):
            raise ProtocolError("CONNECT ends inside a field")
        i += 2 + n
        return packet[i - n : i]

    take()  # protocol name
    if i + 4 > len(packet):
        raise ProtocolError("CONNECT too short")
    level, flags = packet[i], packet[i + 1]
    if level not in (3, 4):  # 3.1, 3.1.1; MQTT 5 puts properties here (amqtt refuses it)
        raise ProtocolError(f"MQTT protocol level {level} not supported")
    i += 4  # level, flags, keep-alive
    client_id = take()
    will_topic = None
    if flags & 0x04:
        will_topic = take().decode("utf-8", "replace")
        take()  # will message
    username = take().decode("utf-8", "replace") if flags & 0x80 else None
    password = take().decode("utf-8", "replace") if flags & 0x40 else None
    return Connect(client_id.decode("utf-8", "replace"), username, password, will_topic)


def id_owner(client_id: str, users: list[str]) -> str | None:
    """The identity a client id names: the longest user U with id `U` or `...-U`; else None."""
    named = [u for u in users if client_id == u or client_id.endswith("-" + u)]
    return max(named, key=len) if named else None


class ConnectGate:
    """Admits or refuses a CONNECT before the broker acts on it (see the module docstring)."""

    def __init__(
        self,
        passwords: PasswordFile | None,
        acl: Acl | None,
        allow_anonymous: bool,
        holder: Callable[[str], str | None] = lambda client_id: None,
    ) -> None:
        """`holder(client_id)`: the username ("" anonymous) of the connected client holding that
        id, None if no client holds it."""
        self.passwords, self.acl, self.allow_anonymous = passwords, acl, allow_anonymous
        self.holder = holder
        self.refused = 0

    async def refusal(self, c: Connect) -> int | None:
        """None to admit; else the CONNACK code to refuse with (logged, never the password)."""
        reason, code = None, NOT_AUTHORISED
        if c.username is None and not self.allow_anonymous:
            reason = "no username (anonymous clients not allowed)"
        elif c.username is not None and self.passwords is not None:
            # First: verify re-reads a changed file, so the ids below bind to today's users.
            ok = await asyncio.to_thread(self.passwords.verify, c.username, c.password or "")
            if not ok:
                reason, code = "bad username or password", BAD_CREDENTIALS
        reason = reason or self._binding(c)
        acl, will = self.acl, c.will_topic
        if reason is None and acl is not None and will:
            reason = None if acl.allows(c.username, c.client_id, will, WRITE) else (
                f"will topic {will} not allowed")  # fmt: skip
        if reason is None:
            return None
        self.refused += 1
        log.warning("refused client %r (%r): %s", c.client_id, c.username, reason)
        return code

    def _binding(self, c: Connect) -> str | None:
        if self.passwords is None:
            return None  # no identities to bind ids to: usernames are not checked anyway
        owner = id_owner(c.client_id, self.passwords.users)
        if owner is not None and owner != c.username:
            return f"client id {c.client_id!r} belongs to {owner!r}"
        held_by = self.holder(c.client_id)
        if held_by is not None and held_by != (c.username or ""):
            return f"client id {c.client_id!r} is connected as {held_by!r}"
        return None


def _names(session: Any) -> tuple[str | None, str]:
    username = getattr(session, "username", None) or None
    return username, str(getattr(session, "client_id", "") or "")


class PasswordAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """CONNECT: anonymous only if allowed; a username needs its password from the file."""

    @dataclass
    class Config:
        passwords: Any = None  # PasswordFile | None; None: any username (anonymous allowed)
        acl: Any = None  # Acl | None: checked against the will topic
        allow_anonymous: bool = True

    async def authenticate(self, *, session: Any) -> bool:
        cfg = self.context.config
        username, client_id = _names(session)
        if username is None:
            if cfg.allow_anonymous:
                session.is_anonymous = True
                return True
            log.warning("refused client %r: no username (anonymous clients not allowed)", client_id)
            return False
        passwords: PasswordFile | None = cfg.passwords
        if passwords is None:
            ok = bool(cfg.allow_anonymous)
        else:
            ok = await asyncio.to_thread(passwords.verify, username, session.password or "")
        if not ok:
            log.warning("refused client %r: bad username or password for %r", client_id, username)
            return False
        acl: Acl | None = cfg.acl
        will = session.will_topic if getattr(session, "will_flag", False) else None
        if acl is not None and will and not acl.allows(username, client_id, will, WRITE):
            log.warning("refused client %r (%r): will topic %s not allowed", client_id, username,
                        will)  # fmt: skip
            return False
        return True


class AclTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """PUBLISH, SUBSCRIBE and each delivery (RECEIVE) checked against an `Acl`."""

    @dataclass
    class Config:
        acl: Any = None  # Acl
        on_denied: Any = None  # Callable[[str], None] | None, called with the action

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        acl: Acl = self.context.config.acl
        username, client_id = _names(session)
        if topic is None:
            return False
        if action == Action.SUBSCRIBE:
            ok = acl.allows_subscribe(username, client_id, topic)
        else:
            ok = acl.allows(username, client_id, topic, WRITE if action == Action.PUBLISH else READ)
        if not ok:
            if action != Action.RECEIVE:  # a denied delivery is routine: a wide subscription
                log.warning("denied %s of %s to client %r (%r)", action, topic, client_id, username)
            on_denied: Callable[[str], None] | None = self.context.config.on_denied
            if on_denied is not None:
                on_denied(str(action))
        return ok
