"""Checks every command runs on its options before it starts anything (no torch, no network).

A bad value must come back at once, in one line, not seconds later from deep inside a run.
The spec grammars checked here (partition, staleness, drift) are parsed for real by modules
whose packages import torch (2-3 s); `tests/unit/test_config.py` holds these checks and
those parsers to the same answers.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from fedmq.cli.config import RunConfig
from fedmq.errors import CodecError, ConfigError

TOPIC_FORBIDDEN = frozenset("/+#:") | frozenset(" \t\r\n\0")


def topic_name(flag: str, value: str) -> str:
    """A job or node name is a topic level: non-empty, without '/', '+', '#', ':' or blanks."""
    if not value or any(c in TOPIC_FORBIDDEN for c in value):
        raise ConfigError(
            f"{flag} {value!r}: must be non-empty, without '/', '+', '#', ':' or blanks"
        )
    return value


def at_least(flag: str, value: float, least: float) -> None:
    if not (math.isfinite(value) and value >= least):
        raise ConfigError(f"{flag} must be at least {least:g}, got {value:g}")


def port(flag: str, value: int, *, zero: bool) -> None:
    if not (0 if zero else 1) <= value <= 65535:
        raise ConfigError(f"{flag} must be in [{0 if zero else 1}, 65535], got {value}")


def host(flag: str, name: str) -> str:
    """An address to bind or a name for a certificate: one that resolves, no blanks."""
    import socket

    if not name or any(c.isspace() for c in name) or len(name) > 253:
        raise ConfigError(f"{flag} {name!r}: give a host name or address, e.g. 127.0.0.1")
    try:
        socket.getaddrinfo(name, None)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"{flag} {name!r}: cannot resolve it ({exc})") from None
    return name


def readable_file(flag: str, path: str) -> str:
    """An input file must exist and be readable now, not when a node first needs it."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{flag} {path}: no such file")
    if not p.is_file():
        raise ConfigError(f"{flag} {path}: not a regular file")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{flag} {path}: not readable")
    return str(p)


def writable_dir(flag: str, path: str | Path, *, shown: str | Path | None = None) -> None:
    """`path` is a folder, or can become one: its nearest existing parent takes a new entry.

    Tries it (a temporary folder, removed at once) rather than trusting permission bits:
    root passes every access() check, and /proc or a read-only mount refuse anyway.
    `shown` is the path the user gave, when `path` is only its folder.
    """
    what = f"{flag} {shown if shown is not None else path}"
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what}: {p} is a file, not a folder")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what}: {parent} is a file, so nothing can be made under it")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fedmq-check-", dir=parent))
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write in {parent} ({exc.strerror})") from None


def writable_file(flag: str, path: str) -> None:
    """A file we will write: its folder must be writable; it must not be a folder itself."""
    if Path(path).is_dir():
        raise ConfigError(f"{flag} {path}: is a folder, not a file")
    writable_dir(flag, Path(path).absolute().parent, shown=path)


def codec(flag: str, spec: str) -> None:
    from fedmq.codec import CodecSpec

    try:
        CodecSpec.parse(spec)
    except CodecError as exc:
        raise ConfigError(f"{flag} {spec!r}: {exc}") from None


def _number(text: str, kind: type[float] | type[int]) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(text) from None
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def partition(spec: str) -> None:
    """iid | dirichlet[:ALPHA > 0] | shards[:N >= 1] (workloads.PartitionSpec.parse)."""
    scheme, sep, arg = (part.strip() for part in spec.strip().partition(":"))
    scheme = scheme.lower()
    try:
        ok = (scheme == "iid" and not sep) or (scheme in ("dirichlet", "shards") and not sep)
        if sep and scheme == "dirichlet":
            ok = _number(arg, float) > 0
        elif sep and scheme == "shards":
            ok = _number(arg, int) >= 1
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"--partition {spec!r}: expected iid, dirichlet[:ALPHA > 0] or shards[:PER_CLIENT >= 1]"
        )


def staleness(spec: str) -> None:
    """constant | poly[:A] | hinge[:A:B] | exp[:A], numbers >= 0 (cloud_node.Staleness.parse)."""
    kind, *args = (part.strip() for part in spec.strip().lower().split(":"))
    arity = {"constant": 0, "poly": 1, "hinge": 2, "exp": 1}.get(kind)
    try:
        ok = arity is not None and (not args or len(args) == arity)
        ok = ok and all(_number(a, float) >= 0 for a in args)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"--staleness {spec!r}: expected constant, poly[:A], hinge[:A:B] or exp[:A], "
            "numbers >= 0"
        )


def drift(spec: str) -> None:
    """none | grow[:F in (0, 1]] | labels[:P in [0, 1)[:W >= 1]] (workloads.DriftSpec.parse)."""
    kind, *args = (part.strip() for part in spec.strip().lower().split(":"))
    most = {"none": 0, "grow": 1, "labels": 2}.get(kind)
    try:
        ok = most is not None and len(args) <= most
        if ok and kind == "grow" and args:
            ok = 0 < _number(args[0], float) <= 1
        if ok and kind == "labels" and args:
            ok = 0 <= _number(args[0], float) < 1
            ok = ok and (len(args) < 2 or _number(args[1], int) >= 1)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"--drift {spec!r}: expected none, grow[:F] (0 < F <= 1) or labels[:P[:W]] "
            "(0 <= P < 1, W >= 1 classes)"
        )


def broker_url(url: str) -> None:
    from fedmq.transport import parse_broker_url

    parse_broker_url(url)


def run_config(cfg: RunConfig, *, writes: bool) -> None:
    """Everything about a run config that can be checked without torch, the data or a broker."""
    for flag, spec in (("--codec", cfg.codec), ("--downlink-codec", cfg.downlink_codec),
                       ("--delta-codec", cfg.delta_codec)):  # fmt: skip
        if spec:
            codec(flag, spec)
    from fedmq.codec import CodecSpec

    full = CodecSpec.parse(cfg.downlink_codec)
    if full.topk is not None or full.dtype == "sign":  # as CloudConfig, which needs torch
        raise ConfigError(
            f"--downlink-codec {cfg.downlink_codec}: the full model needs a dense codec "
            "(top-k and sign only make sense for deltas)"
        )
    partition(cfg.partition)
    staleness(cfg.staleness)
    drift(cfg.drift)
    topic_name("--job", cfg.job)
    if cfg.broker:
        broker_url(cfg.broker)
    if cfg.fleet:
        from fedmq.tinyml_profiles import parse_fleet

        edges = len(parse_fleet(cfg.fleet))
        if cfg.min_fit > edges:
            raise ConfigError(f"--min-fit {cfg.min_fit} is more than the fleet's {edges} edges")
        if cfg.head_only > edges:
            raise ConfigError(f"--head-only {cfg.head_only} is more than the fleet's {edges} edges")
    if cfg.split:
        readable_file("--split", cfg.split)
        if cfg.fleet:
            raise ConfigError("--split names each edge's samples; it cannot go with --fleet")
    if cfg.init_weights:
        readable_file("--init-weights", cfg.init_weights)
    if cfg.save_split:
        writable_file("--save-split", cfg.save_split)
    if writes and cfg.out:
        writable_dir("--out", cfg.out)
    elif writes:  # the default, runs/TIME-JOB, lies under the current folder
        writable_dir("--out (default)", "runs")
