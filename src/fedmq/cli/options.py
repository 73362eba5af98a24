"""The node commands' own options, checked before torch loads or a socket opens.

`fedmq run`'s settings are checked by `cli.checks.run_config`; these are the flags that only
`cloud`, `edge` and `centralized` take.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from fedmq.cli import checks
from fedmq.cli.config import FIELDS
from fedmq.errors import ConfigError
from fedmq.tinyml_profiles import Profile

# What `fedmq centralized` reads when it does not run the federated side itself.
CENTRALIZED_ONLY = ("model", "dataset", "seed", "test_fraction", "rounds", "local_epochs",
                    "batch_size", "lr", "momentum")  # fmt: skip


def identity(args: argparse.Namespace) -> None:
    """TLS files readable now, and a connect limit that can be met."""
    for flag in ("tls_ca", "tls_cert", "tls_key"):
        if getattr(args, flag, None):
            checks.readable_file("--" + flag.replace("_", "-"), getattr(args, flag))
    if getattr(args, "connect_timeout", 1.0) <= 0:
        raise ConfigError(f"--connect-timeout must be > 0, got {args.connect_timeout:g}")


def cloud(args: argparse.Namespace) -> None:
    checks.topic_name("--node-id", args.node_id)
    checks.at_least("--min-clients", args.min_clients, 0)
    checks.at_least("--start-timeout", args.start_timeout, 1e-3)
    if args.resume and not args.checkpoint:
        raise ConfigError("--resume needs --checkpoint FILE")
    if args.checkpoint:
        checks.writable_file("--checkpoint", args.checkpoint)
    if args.trusted_keys and not os.path.isdir(args.trusted_keys):
        raise ConfigError(f"--trusted-keys {args.trusted_keys}: no such folder")
    identity(args)


def edge(args: argparse.Namespace) -> Profile | None:
    """The edge's options, and its profile (None without --profile)."""
    from fedmq.tinyml_profiles import get_profile

    checks.broker_url(args.broker)
    checks.topic_name("--id", args.id)
    checks.topic_name("--job", args.job)
    if args.shard is not None:
        checks.at_least("--shard", args.shard, 0)
    checks.at_least("--threads", args.threads, 1)
    if args.codec:
        checks.codec("--codec", args.codec)
    if args.sign_key:
        checks.readable_file("--sign-key", args.sign_key)
    identity(args)
    return get_profile(args.profile) if args.profile else None


def centralized(args: argparse.Namespace) -> dict[str, Any] | None:
    """Refuse run flags nothing reads; the summary of --federated RUN_DIR, if given."""
    if args.no_federated or args.federated:
        unused = [n for n in FIELDS if getattr(args, n) is not None and n not in CENTRALIZED_ONLY]
        if unused:
            flag = "--" + unused[0].replace("_", "-")
            without = "--no-federated" if args.no_federated else "--federated"
            raise ConfigError(f"{flag} is a setting of the federated run, unused with {without}")
    if not args.federated:
        return None
    path = Path(args.federated) / "summary.json"
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
        float(summary["final_accuracy"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--federated {args.federated}: no finished run there ({exc})") from None
    return summary
