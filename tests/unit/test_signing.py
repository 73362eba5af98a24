"""Update signatures: what a signature covers; the cloud's verdict on unsigned or forged ones."""

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmq.cloud_node import FedAvgAggregator, RoundTracker, Verdict
from fedmq.codec import BadSignature, CodecSpec, Limits, decode, sign, split_vector, verify
from fedmq.errors import ConfigError
from fedmq.security.keys import generate_keypair, load_private_key, load_trusted

pytestmark = pytest.mark.unit

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def _chunks(key: Ed25519PrivateKey | None, sender: str = "edge-1", round: int = 3) -> list[bytes]:
    signer = functools.partial(sign, sign_fn=key.sign) if key is not None else None
    return split_vector(
        np.linspace(-1, 1, 3000, dtype=np.float32), CodecSpec.parse("int8+zstd"),
        max_payload=4096, job="j", sender=sender, role="update", round=round, version=2,
        num_samples=10, metrics={"loss": 0.5}, signer=signer,
    )  # fmt: skip


def test_a_signed_chunk_verifies_and_survives_the_wire() -> None:
    payloads = _chunks(KEY)
    assert len(payloads) > 1
    for p in payloads:
        chunk = decode(p)
        assert len(chunk.sig) == 64
        verify(chunk, KEY.public_key())


@pytest.mark.parametrize(
    "change",
    [
        {"round": 4}, {"version": 3}, {"sender": "edge-2"}, {"job": "k"}, {"index": 0},
        {"num_samples": 1000}, {"scale": 2.0}, {"metrics": {"loss": 0.1}}, {"offset": 0},
    ],
)  # fmt: skip
def test_any_changed_header_field_breaks_the_signature(change: dict[str, object]) -> None:
    chunk = decode(_chunks(KEY)[1])
    moved = dataclasses.replace(chunk, **change)  # type: ignore[arg-type]
    if moved == chunk:
        pytest.skip("no change")
    with pytest.raises(BadSignature):
        verify(moved, KEY.public_key())


def test_changed_data_breaks_the_digest_the_signature_covers() -> None:
    chunk = decode(_chunks(KEY)[0])
    from fedmq.codec.chunking import digest

    data = bytes([chunk.data[0] ^ 1]) + chunk.data[1:]
    with pytest.raises(BadSignature):
        verify(dataclasses.replace(chunk, data=data, digest=digest(data)), KEY.public_key())


def test_unsigned_and_other_keys_are_rejected() -> None:
    with pytest.raises(BadSignature, match="not signed"):
        verify(decode(_chunks(None)[0]), KEY.public_key())
    with pytest.raises(BadSignature, match="does not match"):
        verify(decode(_chunks(OTHER)[0]), KEY.public_key())


def _tracker(keys: dict[str, object]) -> RoundTracker:
    return RoundTracker(
        job="j", round=3, version=2, total=3000, selected=("edge-1", "edge-2"),
        aggregator=FedAvgAggregator(np.zeros(3000, np.float32)), limits=Limits(),
        keys=keys,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_tracker_counts_forged_unsigned_and_unknown_senders() -> None:
    tracker = _tracker({"edge-1": KEY.public_key()})
    assert tracker.offer(decode(_chunks(None)[0]), "edge-1") is Verdict.FORGED
    assert tracker.offer(decode(_chunks(OTHER)[0]), "edge-1") is Verdict.FORGED
    assert tracker.offer(decode(_chunks(OTHER, "edge-2")[0]), "edge-2") is Verdict.FORGED
    assert tracker.offer(decode(_chunks(KEY, round=2)[0]), "edge-1") is Verdict.STALE
    verdicts = [tracker.offer(decode(p), "edge-1") for p in _chunks(KEY)]
    assert verdicts == [Verdict.ACCEPTED] * len(verdicts)
    assert tracker.offer(decode(_chunks(KEY)[0]), "edge-1") is Verdict.DUPLICATE  # a replay
    assert tracker.counters.forged == 3 and tracker.completed == ("edge-1",)


def test_key_files_round_trip_and_refuse_to_overwrite(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path, "edge-7")
    assert private.stat().st_mode & 0o777 == 0o600
    key = load_private_key(private)
    trusted = load_trusted(tmp_path)["edge-7"]
    assert trusted.public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(ConfigError, match="--force"):
        generate_keypair(tmp_path, "edge-7")
    with pytest.raises(ConfigError, match=r"signing key .*edge-7\.pub"):
        load_private_key(public)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no <node>\.pub"):
        load_trusted(tmp_path / "empty")


def test_absurd_values_never_reach_the_aggregate() -> None:
    aggregator = FedAvgAggregator(np.zeros(3000, np.float32))
    tracker = RoundTracker(
        job="j", round=3, version=2, total=3000, selected=("edge-1",), aggregator=aggregator,
        limits=Limits(), max_abs=10.0,
    )  # fmt: skip
    huge = split_vector(
        np.full(3000, 1e6, np.float32), CodecSpec.parse("fp32"), max_payload=4096, job="j",
        sender="edge-1", role="update", round=3, version=2, num_samples=10,
    )  # fmt: skip
    assert [tracker.offer(decode(p), "edge-1") for p in huge] == [Verdict.OUT_OF_RANGE] * len(huge)
    assert tracker.counters.out_of_range == len(huge) and tracker.completed == ()
    for p in _chunks(None):  # the honest update (values in [-1, 1]) still counts afterwards
        assert tracker.offer(decode(p), "edge-1") is Verdict.ACCEPTED
    assert float(np.abs(aggregator.result()).max()) <= 1.0
