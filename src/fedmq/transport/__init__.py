"""MQTT sessions shared by both nodes: connect, presence, reconnect with backoff, metering, dedupe.

Depends on codec only; the node runtimes build on `Session`, `Topics`, `Reassembler` and `Deduper`.
"""

from fedmq.transport.follow import ModelFollower, Step
from fedmq.transport.meter import ByteMeter
from fedmq.transport.reassembly import Deduper, Reassembler
from fedmq.transport.session import Session, SessionConfig, parse_broker_url
from fedmq.transport.topics import Topics

__all__ = [
    "ByteMeter",
    "Deduper",
    "ModelFollower",
    "Reassembler",
    "Session",
    "SessionConfig",
    "Step",
    "Topics",
    "parse_broker_url",
]
