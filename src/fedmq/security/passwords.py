"""Password files in Mosquitto's `mosquitto_passwd` format, so one file serves both brokers.

A line is `user:$7$<iterations>$<salt, base64>$<PBKDF2-HMAC-SHA512 of the password, base64>`.
We write `$7$` only; we also read `$6$<salt>$<SHA512(password + salt)>` from Mosquitto <= 1.6.
Plaintext passwords never reach the disk or the log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from pathlib import Path

from fedmq.errors import ConfigError

log = logging.getLogger(__name__)

# Every connect costs the broker one hash, and Mosquitto hashes on its only thread: 10k rounds
# is ~25 ms per connect here, 100x Mosquitto's default of 101. Give devices long random
# passwords; stretching matters for human-chosen ones.
ITERATIONS = 10_000
SALT_BYTES = 12  # as mosquitto_passwd
MAX_LINE = 255  # Mosquitto 2.0 reads password lines into a 256-byte buffer
_FORBIDDEN = set(":/+#") | {chr(c) for c in range(33)} | {"\x7f"}


def check_username(user: str) -> str:
    """A username is also a topic level (`status/<id>`): no `:`, `/`, `+`, `#`, blanks."""
    if not user or any(c in _FORBIDDEN for c in user):
        raise ConfigError(
            f"username {user!r}: must be non-empty, without ':', '/', '+', '#' or blanks"
        )
    return user


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """The `$7$...` hash of `password` (PBKDF2-HMAC-SHA512, 64-byte digest)."""
    if not password:
        raise ConfigError("empty password")
    if iterations < 1:
        raise ConfigError("iterations must be >= 1")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches a `$7$` or `$6$` hash; constant-time compare."""
    kind, salt, digest, iterations = _parse_hash(encoded)
    if kind == "7":
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    else:
        got = hashlib.sha512(password.encode() + salt).digest()
    return hmac.compare_digest(got, digest)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _parse_hash(encoded: str) -> tuple[str, bytes, bytes, int]:
    """(kind, salt, digest, iterations) of `$7$it$salt$hash` or `$6$salt$hash`."""
    parts = encoded.split("$")
    try:
        if len(parts) == 5 and parts[:2] == ["", "7"]:
            iterations = int(parts[2])
            if iterations < 1:
                raise ValueError("iterations < 1")
            salt, digest = (base64.b64decode(p, validate=True) for p in parts[3:])
            kind = "7"
        elif len(parts) == 4 and parts[:2] == ["", "6"]:
            salt, digest = (base64.b64decode(p, validate=True) for p in parts[2:])
            kind, iterations = "6", 1
        else:
            raise ValueError("not $7$ITERATIONS$SALT$HASH (nor the older $6$SALT$HASH)")
        if len(digest) != 64 or not salt:
            raise ValueError(f"a {len(digest)}-byte hash where SHA512 has 64")
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"bad password hash: {exc}") from None
    return kind, salt, digest, iterations


def parse_password_file(text: str, source: str) -> dict[str, str]:
    """{user: hash}. Blank lines and `#` comments are skipped; any other bad line is an error."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        where = f"{source}:{number}"
        if not sep or not user:
            raise ConfigError(f"{where}: expected USER:HASH (make lines with `fedmq passwd`)")
        try:
            _parse_hash(encoded)
        except ValueError as exc:
            raise ConfigError(f"{where}: user {user!r}: {exc}") from None
        if user in users:
            raise ConfigError(f"{where}: user {user!r} appears twice")
        users[user] = encoded
    return users


class PasswordFile:
    """A password file on disk; `verify` re-reads it when it changes (as Mosquitto on SIGHUP)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, str] = {}
        self.reload()

    def __repr__(self) -> str:
        return f"PasswordFile({str(self.path)!r})"

    def _stat(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def reload(self) -> None:
        try:
            stamp, text = self._stat(), self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"password file {self.path}: cannot read it: {exc}") from exc
        self._users = parse_password_file(text, str(self.path))
        self._stamp = stamp
        log.info("password file %s: %d identities", self.path, len(self._users))

    def _refresh(self) -> None:
        try:
            changed = self._stat() != self._stamp
            if changed:
                self.reload()
        except (OSError, ConfigError) as exc:  # keep serving the last good file
            log.error("password file %s not reloaded: %s", self.path, exc)
            self._stamp = None

    @property
    def users(self) -> list[str]:
        return sorted(self._users)

    def verify(self, user: str, password: str) -> bool:
        """True if `user` is in the file and `password` is theirs. Blocking: hashes."""
        self._refresh()
        encoded = self._users.get(user)
        return encoded is not None and verify_password(password, encoded)


def set_password(
    path: Path, user: str, password: str | None, *, iterations: int = ITERATIONS
) -> bool:
    """Add or update `user` (delete it with `password=None`); other lines are kept as they are.

    Writes atomically, mode 0600. Returns whether the user was already in the file.
    """
    check_username(user)
    path = Path(path)
    lines: list[str] = []
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"password file {path}: cannot read it: {exc}") from exc
        parse_password_file(text, str(path))  # refuse to rewrite a file we cannot read
        lines = text.splitlines()
    existed = False
    out: list[str] = []
    for line in lines:
        if line.strip().partition(":")[0] == user:
            existed = True
            if password is not None:
                out.append(f"{user}:{hash_password(password, iterations=iterations)}")
        else:
            out.append(line)
    if password is not None and not existed:
        out.append(f"{user}:{hash_password(password, iterations=iterations)}")
    if password is None and not existed:
        raise ConfigError(f"password file {path}: no user {user!r} to delete")
    if any(len(line.encode()) > MAX_LINE for line in out):
        raise ConfigError(f"user {user!r}: line over Mosquitto's {MAX_LINE}-byte limit")
    _write_private(path, "".join(line + "\n" for line in out))
    return existed


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a file only its owner can read."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp creates it 0600
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"password file {path}: cannot write it: {exc}") from exc
