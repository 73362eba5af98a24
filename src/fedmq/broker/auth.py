"""amqtt plugins that enforce a password file and a topic ACL (fedmq.security) in the broker.

amqtt publishes a client's will without any topic check, so the auth plugin refuses a
connection whose will topic the ACL does not let that client write (Mosquitto checks it too).
Denials are logged with the username and topic, never the password.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from fedmq.security import READ, WRITE, Acl, PasswordFile

log = logging.getLogger(__name__)


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
