"""Pure MQTT framing guards that act on a packet's declared length before its body is read.

`PacketGuard` (the embedded broker, facing clients) rejects an oversized packet; `PacketFilter`
(every node, facing its broker) reads past an oversized PUBLISH and drops it.

amqtt reads any packet up to the protocol maximum (256 MiB) fully into memory; a 100 MiB publish
took 700 MiB of broker memory. The guard parses only the fixed header (type byte + remaining-length
varint) of each packet as bytes flow past, so the check costs O(1) per byte and no buffering.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmq.errors import LimitExceeded, ProtocolError

_HEADER, _LENGTH, _BODY, _DROP = 0, 1, 2, 3


class PacketGuard:
    """Feed it every byte a client sends, in order; it raises on the first oversized packet."""

    def __init__(self, max_packet: int) -> None:
        if max_packet < 2:
            raise ValueError("max_packet must be at least 2 bytes")
        self.max_packet = max_packet
        self.packets = 0
        self._state = _HEADER
        self._length = 0
        self._multiplier = 1
        self._left = 0

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._state == _BODY:
                step = min(self._left, n - i)
                self._left -= step
                i += step
                if self._left == 0:
                    self._state = _HEADER
                continue
            byte = data[i]
            i += 1
            if self._state == _HEADER:
                self._state, self._length, self._multiplier = _LENGTH, 0, 1
                continue
            self._length += (byte & 0x7F) * self._multiplier
            if self._length > self.max_packet:
                raise LimitExceeded(
                    f"MQTT packet declares {self._length} B, over the limit of {self.max_packet} B"
                )
            if byte & 0x80:
                self._multiplier *= 128
                if self._multiplier > 128**3:
                    raise ProtocolError("malformed MQTT remaining length (more than 4 bytes)")
                continue
            self.packets += 1
            self._left = self._length
            self._state = _BODY if self._left else _HEADER


PUBLISH = 3
TOPIC_SHOWN = 128  # bytes of a dropped PUBLISH's topic kept for the log line


@dataclass(frozen=True)
class Dropped:
    """An oversized PUBLISH that `PacketFilter` read past."""

    size: int  # its remaining length, bytes
    qos: int
    packet_id: int | None  # QoS 1 and 2: to acknowledge it, or the broker holds it in flight
    topic: str  # its first TOPIC_SHOWN bytes


class PacketFilter:
    """A client's inbound byte stream with oversized PUBLISH packets cut out, unbuffered.

    `PacketGuard` answers an oversized packet by dropping the connection, right for a broker
    facing a client. A client facing a broker would come back to the same retained message on
    every reconnect, forever (issue 12), so this reads past it instead: `feed` returns the
    bytes of the packets within the limit, byte for byte, and reports each dropped PUBLISH
    once its body has gone by. A packet's 2-5 header bytes are held back until its length is
    known; nothing else is kept. An oversized packet of another type is still an error
    (brokers send no large packets but PUBLISH), as is a malformed length.
    """

    def __init__(self, max_packet: int) -> None:
        if max_packet < 2:
            raise ValueError("max_packet must be at least 2 bytes")
        self.max_packet = max_packet
        self.packets = 0  # passed on
        self.dropped = 0
        self._state = _HEADER
        self._head = bytearray()  # the header of the packet being read, until its length is known
        self._length = 0
        self._multiplier = 1
        self._left = 0  # body bytes of the current packet still to come
        # Parsing the body of a dropped PUBLISH, only as far as its packet id:
        self._pos = 0  # bytes of its body seen
        self._topic_len = 0
        self._topic = bytearray()
        self._id = 0

    @property
    def dropping(self) -> bool:
        return self._state == _DROP

    def next_read(self, bufsize: int) -> int:
        """How many bytes to read next: never past the current packet, so no packet's bytes
        wait here while the reader thinks the socket is drained; large reads while dropping."""
        if self._state in (_BODY, _DROP):
            return max(1, min(self._left, bufsize if self._state == _BODY else 1 << 16))
        return 1

    def feed(self, data: bytes) -> tuple[bytes, list[Dropped]]:
        out = bytearray()
        dropped: list[Dropped] = []
        i, n = 0, len(data)
        while i < n:
            if self._state == _BODY:
                step = min(self._left, n - i)
                out += data[i : i + step]
                self._left -= step
                i += step
                if self._left == 0:
                    self._state = _HEADER
                continue
            if self._state == _DROP:
                i = self._skip(data, i, dropped)
                continue
            byte = data[i]
            i += 1
            self._head.append(byte)
            if self._state == _HEADER:
                self._state, self._length, self._multiplier = _LENGTH, 0, 1
                continue
            self._length += (byte & 0x7F) * self._multiplier
            if byte & 0x80:
                self._multiplier *= 128
                if self._multiplier > 128**3:
                    raise ProtocolError("malformed MQTT remaining length (more than 4 bytes)")
                continue
            kind = self._head[0] >> 4
            if self._length > self.max_packet and kind != PUBLISH:
                raise LimitExceeded(
                    f"MQTT packet of type {kind} declares {self._length} B, over the limit of "
                    f"{self.max_packet} B"
                )
            self._left = self._length
            if self._length > self.max_packet:
                self._state, self._pos, self._topic_len, self._id = _DROP, 0, 0, 0
                self._topic.clear()
                continue  # its header is not passed on either
            self.packets += 1
            out += self._head
            self._head.clear()
            self._state = _BODY if self._left else _HEADER
        return bytes(out), dropped

    def _skip(self, data: bytes, i: int, dropped: list[Dropped]) -> int:
        """Read past a dropped PUBLISH's body from data[i:], looking only at its topic length,
        the topic's start and the packet id. Returns the new position in `data`."""
        qos = (self._head[0] >> 1) & 0x03
        end = len(data)
        while i < end and self._left:
            if self._pos < 2:  # topic length, 2 bytes big-endian
                self._topic_len, step = (self._topic_len << 8) | data[i], 1
            elif self._pos < 2 + self._topic_len:  # the topic: keep its start for the log
                step = min(2 + self._topic_len - self._pos, end - i, self._left)
                room = TOPIC_SHOWN - len(self._topic)
                if room > 0:
                    self._topic += data[i : i + min(step, room)]
            elif qos and self._pos < 4 + self._topic_len:  # packet id, 2 bytes big-endian
                self._id, step = (self._id << 8) | data[i], 1
            else:  # the payload
                step = min(self._left, end - i)
            self._pos += step
            self._left -= step
            i += step
        if self._left == 0:
            has_id = qos > 0 and self._pos >= 4 + self._topic_len
            topic = self._topic.decode("utf-8", "replace")
            dropped.append(Dropped(self._length, qos, self._id if has_id else None, topic))
            self.dropped += 1
            self._head.clear()
            self._state = _HEADER
        return i
