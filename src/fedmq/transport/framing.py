"""A pure MQTT framing guard: rejects a packet by its declared length before its body is read.

amqtt reads any packet up to the protocol maximum (256 MiB) fully into memory; a 100 MiB publish
took 700 MiB of broker memory. The guard parses only the fixed header (type byte + remaining-length
varint) of each packet as bytes flow past, so the check costs O(1) per byte and no buffering.
"""

from __future__ import annotations

from fedmq.errors import LimitExceeded, ProtocolError

_HEADER, _LENGTH, _BODY = 0, 1, 2


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
