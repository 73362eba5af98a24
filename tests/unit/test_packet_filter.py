"""PacketFilter: oversized PUBLISH packets are read past and reported, the rest passes intact."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmq.errors import LimitExceeded, ProtocolError
from fedmq.transport.framing import Dropped, PacketFilter

pytestmark = pytest.mark.unit

LIMIT = 300


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: str, payload_len: int, qos: int = 0, packet_id: int = 7) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + (packet_id.to_bytes(2, "big") if qos else b"")
    body += bytes([0xAB]) * payload_len
    return bytes([0x30 | (qos << 1) | 1]) + varint(len(body)) + body


def run(stream: bytes, reads: list[int]) -> tuple[bytes, list[Dropped], PacketFilter]:
    """Feed `stream` the way a node does: each read sized by next_read()."""
    f, out, dropped, i, k = PacketFilter(LIMIT), b"", [], 0, 0
    while i < len(stream):
        n = f.next_read(reads[k % len(reads)])
        k += 1
        passed, gone = f.feed(stream[i : i + n])
        out, i = out + passed, i + n
        dropped += gone
    return out, dropped, f


packets = st.lists(
    st.tuples(st.sampled_from(["fedmq/d/job", "t", "x" * 200]), st.integers(0, 2000),
              st.integers(0, 2), st.integers(1, 65535)),
    max_size=12,
)  # fmt: skip


@given(packets, st.lists(st.integers(1, 5000), min_size=1, max_size=5))
def test_small_packets_pass_byte_for_byte_and_large_ones_are_reported(
    spec: list[tuple[str, int, int, int]], reads: list[int]
) -> None:
    built = [(publish(t, n, q, pid), 2 + len(t) + (2 if q else 0) + n, t, q, pid)
             for t, n, q, pid in spec]  # fmt: skip
    out, dropped, f = run(b"".join(p for p, *_ in built), reads)
    assert out == b"".join(p for p, size, *_ in built if size <= LIMIT)
    big = [(t, q, pid) for _, size, t, q, pid in built if size > LIMIT]
    assert [(d.topic, d.qos, d.packet_id) for d in dropped] == [
        (t[:128], q, pid if q else None) for t, q, pid in big
    ]
    assert f.dropped == len(big) and f.packets == len(built) - len(big)


def test_a_ten_megabyte_retained_job_is_dropped_in_large_reads() -> None:
    stream = publish("fedmq/digits/job", 10 << 20, qos=1, packet_id=513) + bytes([0xD0, 0])
    f = PacketFilter(2 << 20)
    out, dropped, reads, i = b"", [], 0, 0
    while i < len(stream):
        n = f.next_read(1)  # paho asks for one byte (a command) while it is dropped
        passed, gone = f.feed(stream[i : i + n])
        out, dropped, reads, i = out + passed, dropped + gone, reads + 1, i + n
    assert out == bytes([0xD0, 0])  # the PINGRESP after it
    assert dropped == [Dropped(len(stream) - 5 - 2, 1, 513, "fedmq/digits/job")]
    assert reads < 200  # 64 KiB at a time, not one byte


def test_other_oversized_packets_and_bad_lengths_still_raise() -> None:
    with pytest.raises(LimitExceeded, match="type 9"):
        PacketFilter(LIMIT).feed(bytes([0x90]) + varint(LIMIT + 1))
    with pytest.raises(ProtocolError):
        PacketFilter(1 << 30).feed(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
