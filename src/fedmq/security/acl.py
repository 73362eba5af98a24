"""Topic ACLs in Mosquitto's `acl_file` format, so one file serves both brokers.

    topic [read|write|readwrite|deny] TOPIC     before any `user` line: anonymous clients
    user NAME                                   the `topic` lines after it: that user
    pattern [read|write|readwrite|deny] TOPIC   every client; %u = username, %c = client id

A `deny` that matches wins over any grant. Without a matching grant, access is denied.
`fedmq_acl()` writes fedmq's own ACL: edges (username == node id) publish only their own
status and update; the cloud publishes the job, task, models, deltas, control and summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fedmq.errors import ConfigError

log = logging.getLogger(__name__)

READ, WRITE = 1, 2
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": 0}


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching of a topic name against a filter (`+` one level, `#` the rest)."""
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False  # [MQTT-4.7.2-1]: wildcards at the first level skip $SYS and the like
    levels = topic.split("/")
    for i, want in enumerate(topic_filter.split("/")):
        if want == "#":
            return True
        if i >= len(levels) or (want != "+" and want != levels[i]):
            return False
    return len(levels) == len(topic_filter.split("/"))


def filter_covers(outer: str, inner: str) -> bool:
    """Whether every topic that filter `inner` matches is also matched by filter `outer`."""
    a, b = outer.split("/"), inner.split("/")
    for i, want in enumerate(a):
        if want == "#":
            return True
        if i >= len(b) or b[i] == "#" or (want != "+" and want != b[i]):
            return False
    return len(a) == len(b)


@dataclass(frozen=True)
class Rule:
    topic: str
    access: int  # READ | WRITE bits; 0 is `deny`
    pattern: bool = False  # %u / %c substituted per client

    def resolve(self, username: str | None, client_id: str) -> str | None:
        """The rule's topic for this client; None where it cannot apply (as Mosquitto)."""
        if not self.pattern:
            return self.topic
        # A name holding a wildcard or a level separator could reach others' topics.
        for mark, name in (("%u", username), ("%c", client_id)):
            if mark in self.topic and (name is None or any(c in name for c in "+#/")):
                return None
        return self.topic.replace("%c", client_id).replace("%u", username or "")


@dataclass
class Acl:
    """Parsed rules; `allows` for topic names, `allows_subscribe` for subscription filters."""

    source: str = "<acl>"
    anonymous: list[Rule] = field(default_factory=list)
    users: dict[str, list[Rule]] = field(default_factory=dict)
    patterns: list[Rule] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Acl({self.source!r})"

    def _rules(self, username: str | None, client_id: str) -> list[tuple[str, int]]:
        own = self.anonymous if username is None else self.users.get(username, [])
        rules = [(r.topic, r.access) for r in own]
        for rule in self.patterns:
            topic = rule.resolve(username, client_id)
            if topic is not None:
                rules.append((topic, rule.access))
        return rules

    def allows(self, username: str | None, client_id: str, topic: str, access: int) -> bool:
        """May this client publish (WRITE) to, or receive (READ) from, topic name `topic`?"""
        rules = [(t, a) for t, a in self._rules(username, client_id) if topic_matches(t, topic)]
        if any(a == 0 for _, a in rules):
            return False
        return any(a & access for _, a in rules)

    def allows_subscribe(self, username: str | None, client_id: str, topic_filter: str) -> bool:
        """May this client subscribe to `topic_filter`: is it inside one of its READ rules?

        Each delivered message is checked again with `allows(..., READ)`, so `deny` rules hold.
        """
        rules = self._rules(username, client_id)
        return any(a & READ and filter_covers(t, topic_filter) for t, a in rules)


def parse_acl(text: str, source: str = "<acl>") -> Acl:
    acl = Acl(source=source)
    user: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "user":
            if not rest:
                raise ConfigError(f"{where}: `user` needs a username")
            user = rest
            acl.users.setdefault(user, [])
        elif keyword in ("topic", "pattern"):
            access_word, _, topic = rest.partition(" ")
            if access_word in _ACCESS and topic.strip():
                access, topic = _ACCESS[access_word], topic.strip()
            else:
                access, topic = READ | WRITE, rest  # no access word means readwrite
            _check_filter(topic, where)
            rule = Rule(topic, access, pattern=keyword == "pattern")
            if rule.pattern:
                acl.patterns.append(rule)
            elif user is None:
                acl.anonymous.append(rule)
            else:
                acl.users[user].append(rule)
        else:
            raise ConfigError(f"{where}: unknown keyword {keyword!r} (topic, user or pattern)")
    return acl


def _check_filter(topic: str, where: str) -> None:
    levels = topic.split("/")
    bad = any(("#" in lv and lv != "#") or ("+" in lv and lv != "+") for lv in levels)
    if not topic or bad or "#" in levels[:-1]:
        raise ConfigError(f"{where}: {topic!r} is not a valid topic filter")


def load_acl(path: str | Path) -> Acl:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"ACL file {path}: cannot read it: {exc}") from exc
    acl = parse_acl(text, str(path))
    log.info("ACL %s: %d users, %d patterns", path, len(acl.users), len(acl.patterns))
    return acl


# What each role needs, from transport/topics.py (`fedmq/<job>/...`, any job).
CLOUD_WRITES = ("job", "task", "model/+", "delta/+", "summary", "control", "chain/+")
CLOUD_READS = ("status/+", "update/+", "chain/+")
# chain/+: in chained mode an edge hands the model to the next one (whose update signatures the
# cloud checks); predict/...: any client may ask the serving node for predictions.
EDGE_WRITES = ("status/%u", "update/%u", "chain/+", "predict/request/%u")
EDGE_READS = (
    "job", "task", "model/+", "delta/+", "control", "summary", "chain/%u",
    "predict/response/%u",
)  # fmt: skip
SERVE_WRITES = ("predict/response/+",)
SERVE_READS = ("job", "task", "model/+", "delta/+", "predict/request/+")


def fedmq_acl(cloud_user: str = "cloud") -> str:
    """fedmq's ACL as Mosquitto acl_file text; `fedmq acl` prints it."""
    lines = [
        "# fedmq topic ACL, Mosquitto acl_file format (`fedmq broker --acl-file` reads it too).",
        f"# Made by `fedmq acl --cloud-user {cloud_user}`. Anonymous clients get nothing.",
        "# Every node's username is its node id: the cloud's node id must be its username.",
        "",
        "# The cloud node.",
        f"user {cloud_user}",
        *(f"topic write fedmq/+/{t}" for t in CLOUD_WRITES),
        *(f"topic read fedmq/+/{t}" for t in CLOUD_READS),
        "",
        "# The serving node (`fedmq serve --username serve`).",
        "user serve",
        *(f"topic write fedmq/+/{t}" for t in SERVE_WRITES),
        *(f"topic read fedmq/+/{t}" for t in SERVE_READS),
        "",
        "# Every client (edges; the cloud too): its own status and update, and the broadcasts.",
        "# (Mosquitto warns that the read patterns hold no %u or %c: they are for every client.)",
        *(f"pattern write fedmq/+/{t}" for t in EDGE_WRITES),
        *(f"pattern read fedmq/+/{t}" for t in EDGE_READS),
    ]
    return "\n".join(lines) + "\n"
