"""The one exception tree of fedmq. Every layer raises these, translated once at its boundary.

FedmqError
├── CodecError (ValueError)        bytes that cannot be decoded into a valid message
│   ├── LimitExceeded              a declared size, count or length over a configured limit
│   ├── DigestMismatch             the body does not match the digest in its header
│   └── SchemaVersionError         an envelope from an unknown schema version
├── ProtocolError                  a well-formed message that breaks the round protocol
│   └── StaleMessage               a message for a round/version that is already closed
├── TransportError                 the MQTT session failed (connect, publish, subscribe)
├── BrokerError                    the embedded broker could not start or stop
└── ConfigError (ValueError)       bad configuration from a file, the environment or flags
"""

from __future__ import annotations


class FedmqError(Exception):
    """Root of every error fedmq raises on purpose."""


class CodecError(FedmqError, ValueError):
    """Bytes that cannot be decoded into a valid message."""


class LimitExceeded(CodecError):
    """A declared size, count or length is over a configured limit (checked before allocation)."""


class DigestMismatch(CodecError):
    """A body does not match the digest carried in its header."""


class SchemaVersionError(CodecError):
    """An envelope written with a schema version this build does not read."""


class ProtocolError(FedmqError):
    """A well-formed message that breaks the round protocol."""


class StaleMessage(ProtocolError):
    """A message for a round or model version that is already closed."""


class TransportError(FedmqError):
    """The MQTT session failed: connect, publish or subscribe."""


class BrokerError(FedmqError):
    """The embedded broker could not start or stop."""


class ConfigError(FedmqError, ValueError):
    """Bad configuration from a file, the environment or the command line."""
