"""codec: the only place that knows byte layouts. Pure functions and frozen dataclasses, no I/O.

Wire messages <-> msgpack payloads, codec specs, value encodings, chunking, error feedback.
"""

from fedmq.codec.bounds import MIN_PAYLOAD, header_size_bound, min_payload
from fedmq.codec.chunking import assemble, chunk_values, split_vector
from fedmq.codec.envelope import decode, encode
from fedmq.codec.feedback import ErrorFeedback
from fedmq.codec.limits import ALIGN, DEFAULT_LIMITS, DIGEST_SIZE, SCHEMA_VERSION, Limits
from fedmq.codec.messages import (
    Control,
    JobSpec,
    Message,
    RoundSummary,
    RoundTask,
    Status,
    TensorChunk,
)
from fedmq.codec.signing import BadSignature, check, sign, signing_bytes, verify
from fedmq.codec.spec import CodecSpec, codec_names
from fedmq.codec.tensors import decode_values, encode_chunk, encode_values

__all__ = [
    "ALIGN",
    "DEFAULT_LIMITS",
    "DIGEST_SIZE",
    "MIN_PAYLOAD",
    "SCHEMA_VERSION",
    "BadSignature",
    "CodecSpec",
    "Control",
    "ErrorFeedback",
    "JobSpec",
    "Limits",
    "Message",
    "RoundSummary",
    "RoundTask",
    "Status",
    "TensorChunk",
    "assemble",
    "check",
    "chunk_values",
    "codec_names",
    "decode",
    "decode_values",
    "encode",
    "encode_chunk",
    "encode_values",
    "header_size_bound",
    "min_payload",
    "sign",
    "signing_bytes",
    "split_vector",
    "verify",
]
