"""`fedmq broker-config`: a Mosquitto config for a port and files of your choice.

The shipped `broker/configs/mosquitto.conf` listens on 1883 and `mosquitto-secure.conf` reads
/etc/fedmq; this writes the same limits for any port, address, password file, ACL and TLS
files, with absolute paths, so `mosquitto -c FILE` works from any folder.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fedmq.cli import checks
from fedmq.errors import ConfigError

CONFIGS = Path(__file__).parents[1] / "broker" / "configs"
# As the shipped mosquitto.conf (tests hold the two to the same values).
LIMITS = (
    "# fedmq chunks are <= 128 KiB by default; drop clients that send far larger packets.",
    "max_packet_size 2097152",
    "# The default of 1000 silently drops QoS 1 messages to slow subscribers under load.",
    "max_queued_messages 100000",
    "max_queued_bytes 268435456",
    "max_inflight_messages 100",
    "persistence false",
    "log_type error",
    "log_type warning",
)


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "broker-config",
        help="write a Mosquitto config for a port and your password, ACL and TLS files",
        description="Write a Mosquitto config with fedmq's packet and queue limits for "
        "--port, then run `mosquitto -c FILE`. Without --password-file the broker is open to "
        "anyone who reaches it: say so with --allow-anonymous.",
    )
    p.add_argument("--port", type=int, required=True, help="port to listen on")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--password-file", metavar="FILE", help="identities (`fedmq passwd`)")
    p.add_argument(
        "--acl-file",
        metavar="FILE",
        help="topic ACL (default with --password-file: the shipped fedmq.acl, cloud user cloud)",
    )
    p.add_argument(
        "--allow-anonymous", action="store_true", help="no --password-file: accept anyone"
    )
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate: TLS only on --port")
    p.add_argument("--tls-key", metavar="PEM", help="its private key (needed with --tls-cert)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA of client certificates: require one")
    p.add_argument("--out", metavar="FILE", help="write here (default: print it)")
    p.set_defaults(func=cmd_broker_config)


def render(args: argparse.Namespace) -> str:
    """The config text; ConfigError for options that cannot make a working broker."""
    checks.port("--port", args.port, zero=False)  # Mosquitto has no "any free port"
    if not args.host or any(c.isspace() for c in args.host):
        raise ConfigError(f"--host {args.host!r}: give one address, e.g. 127.0.0.1")
    files = {}
    for flag in ("password_file", "acl_file", "tls_cert", "tls_key", "tls_ca"):
        value = getattr(args, flag)
        if value:
            name = "--" + flag.replace("_", "-")
            files[flag] = str(Path(checks.readable_file(name, value)).resolve())
    if not args.password_file and not args.allow_anonymous:
        raise ConfigError(
            "give --password-file FILE (make one with `fedmq passwd FILE USER`), or "
            "--allow-anonymous for a trusted lab"
        )
    if args.password_file and args.allow_anonymous:
        raise ConfigError("--allow-anonymous with --password-file: pick one")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together (Mosquitto reads them apart)")
    if args.tls_ca and not args.tls_cert:
        raise ConfigError("--tls-ca needs --tls-cert and --tls-key (the server's own)")
    if args.password_file and "acl_file" not in files:
        files["acl_file"] = str((CONFIGS / "fedmq.acl").resolve())

    lines = [
        "# Mosquitto config for fedmq, written by `fedmq broker-config`.",
        "# Start: mosquitto -c THIS_FILE       Reload passwords and ACL: kill -HUP <pid>",
        "per_listener_settings false",
        f"allow_anonymous {'true' if args.allow_anonymous else 'false'}",
    ]
    if files:
        lines.append("# Started as root, Mosquitto reads these files as the user mosquitto.")
    if "password_file" in files:
        lines += [f"password_file {files['password_file']}", f"acl_file {files['acl_file']}"]
    elif "acl_file" in files:
        lines.append(f"acl_file {files['acl_file']}")
    scheme = "mqtts" if args.tls_cert else "mqtt"
    lines += [
        "",
        f"# Nodes connect to {scheme}://{args.host}:{args.port}",
        f"listener {args.port} {args.host}",
    ]
    if args.tls_cert:
        lines += [f"certfile {files['tls_cert']}", f"keyfile {files['tls_key']}"]
        if args.tls_ca:
            lines += [f"cafile {files['tls_ca']}", "require_certificate true"]
    if "password_file" in files:
        # A listener setting: after the `listener` line, or Mosquitto opens one on 1883 for it.
        lines += [
            "# Each client's id becomes its username: no identity can take over (kick off)",
            "# another's connection by reusing its client id. One connection per username.",
            "use_username_as_clientid true",
        ]
    return "\n".join([*lines, "", *LIMITS]) + "\n"


def cmd_broker_config(args: argparse.Namespace) -> int:
    if args.out:
        checks.writable_file("--out", args.out)
    text = render(args)
    if not args.out:
        print(text, end="")
        return 0
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"wrote {out}; start the broker with: mosquitto -c {out}")
    return 0
