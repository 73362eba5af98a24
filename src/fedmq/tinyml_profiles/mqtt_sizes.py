"""Exact MQTT 3.1.1 packet sizes, as they cross the socket (no TLS). Pure arithmetic."""

from __future__ import annotations

PUBACK = 4  # also PUBREC/PUBREL/PUBCOMP, UNSUBACK
CONNACK = 4
UNSUBACK = 4
SUBACK_ONE = 5  # one granted QoS
PING = 2  # PINGREQ and PINGRESP each
DISCONNECT = 2


def varint_len(n: int) -> int:
    """Bytes of the Remaining Length field for a body of n bytes."""
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def _packet(body: int) -> int:
    return 1 + varint_len(body) + body


def publish_size(topic: str, payload_len: int, qos: int = 1) -> int:
    body = 2 + len(topic.encode()) + (2 if qos > 0 else 0) + payload_len
    return _packet(body)


def connect_size(
    client_id: str,
    *,
    will_topic: str | None = None,
    will_payload_len: int = 0,
    username: str | None = None,
    password: str | None = None,
) -> int:
    body = 10 + 2 + len(client_id.encode())  # "MQTT", level, flags, keepalive; client id
    if will_topic is not None:
        body += 2 + len(will_topic.encode()) + 2 + will_payload_len
    if username is not None:
        body += 2 + len(username.encode())
    if password is not None:
        body += 2 + len(password.encode())
    return _packet(body)


def subscribe_size(topic: str) -> int:
    return _packet(2 + 2 + len(topic.encode()) + 1)


def unsubscribe_size(topic: str) -> int:
    return _packet(2 + 2 + len(topic.encode()))
