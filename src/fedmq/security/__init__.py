"""Security material: password files and topic ACLs in Mosquitto's formats, trial TLS
certificates (certs.py), update-signing keys (keys.py). Pure files and crypto, no sockets.
"""

from fedmq.security.acl import READ, WRITE, Acl, fedmq_acl, load_acl, parse_acl
from fedmq.security.passwords import (
    PasswordFile,
    check_username,
    hash_password,
    set_password,
    verify_password,
)

__all__ = [
    "READ",
    "WRITE",
    "Acl",
    "PasswordFile",
    "check_username",
    "fedmq_acl",
    "hash_password",
    "load_acl",
    "parse_acl",
    "set_password",
    "verify_password",
]
