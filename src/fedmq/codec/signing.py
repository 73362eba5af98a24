"""Ed25519 signatures over update chunks, independent of the broker.

A chunk's signature covers every header field and the digest of its data (which covers the
data), so a signed chunk cannot be moved to another job, sender, round, version or place in
the vector. Replays of a signed chunk are caught by round bookkeeping, not here: the same
chunk again is a duplicate, an older one is stale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedmq.codec.messages import TensorChunk
from fedmq.errors import CodecError

Signer = Callable[[bytes], bytes]
_DOMAIN = b"fedmq-chunk-v2"  # a signature made for something else never verifies here


class BadSignature(CodecError):
    """A chunk without a signature, or with one its sender's enrolled key did not make."""


def signing_bytes(chunk: TensorChunk) -> bytes:
    """The canonical bytes a chunk's signature is over: every field but `sig` and `data`."""
    head = [
        chunk.job, chunk.sender, chunk.role, chunk.round, chunk.version, chunk.index,
        chunk.count, chunk.total, chunk.offset, chunk.length, chunk.encoding, chunk.scale,
        chunk.num_samples, sorted(chunk.metrics.items()), chunk.digest,
    ]  # fmt: skip
    return _DOMAIN + bytes(msgpack.packb(head, use_bin_type=True))


def signer(key: Ed25519PrivateKey) -> Signer:
    return key.sign


def sign(chunk: TensorChunk, sign_fn: Signer) -> TensorChunk:
    return dataclasses.replace(chunk, sig=sign_fn(signing_bytes(chunk)))


def verify(chunk: TensorChunk, key: Ed25519PublicKey) -> None:
    if not chunk.sig:
        raise BadSignature(f"chunk {chunk.index} of {chunk.sender} is not signed")
    try:
        key.verify(chunk.sig, signing_bytes(chunk))
    except InvalidSignature:
        raise BadSignature(
            f"chunk {chunk.index} of {chunk.sender}: signature does not match its key"
        ) from None


def check(chunk: TensorChunk, keys: Mapping[str, Ed25519PublicKey]) -> None:
    """Verify against the sender's enrolled key; a sender without one is a forgery too."""
    key = keys.get(chunk.sender)
    if key is None:
        raise BadSignature(f"{chunk.sender} has no enrolled key")
    verify(chunk, key)
