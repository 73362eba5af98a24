import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmq.errors import LimitExceeded, ProtocolError
from fedmq.transport.framing import PacketGuard

pytestmark = pytest.mark.unit


def packet(body_len: int, kind: int = 0x30) -> bytes:
    out, n = bytearray([kind]), body_len
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + bytes(body_len)


@given(st.lists(st.integers(0, 5000), max_size=20), st.integers(1, 64))
def test_counts_packets_whatever_the_read_sizes(lengths: list[int], step: int) -> None:
    stream = b"".join(packet(n) for n in lengths)
    guard = PacketGuard(max_packet=5000)
    for i in range(0, len(stream), step):
        guard.feed(stream[i : i + step])
    assert guard.packets == len(lengths)


def test_rejects_on_the_length_bytes_before_the_body() -> None:
    guard = PacketGuard(max_packet=1000)
    guard.feed(packet(1000))
    header = packet(100 << 20)[:5]  # 100 MiB declared: only the 5 header bytes are fed
    with pytest.raises(LimitExceeded, match="over the limit"):
        guard.feed(header)


def test_rejects_a_five_byte_length() -> None:
    guard = PacketGuard(max_packet=1 << 30)
    with pytest.raises(ProtocolError):
        guard.feed(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
