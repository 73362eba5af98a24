"""Byte counters of what crossed a client's socket, per direction."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class MeterReading:
    sent: int
    received: int


class ByteMeter:
    """Counts bytes written to and read from one socket (MQTT bytes; TLS records add overhead)."""

    def __init__(self) -> None:
        # paho's connect() runs in an executor thread, everything else on the loop thread.
        self._lock = threading.Lock()
        self._sent = 0
        self._received = 0

    def add_sent(self, n: int) -> None:
        with self._lock:
            self._sent += n

    def add_received(self, n: int) -> None:
        with self._lock:
            self._received += n

    def read(self) -> MeterReading:
        with self._lock:
            return MeterReading(self._sent, self._received)

    @property
    def sent(self) -> int:
        return self.read().sent

    @property
    def received(self) -> int:
        return self.read().received
