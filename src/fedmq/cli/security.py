"""`fedmq passwd`, `fedmq certs`, `fedmq acl`, and the security flags of `fedmq broker`."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path
from typing import Any

from fedmq.errors import ConfigError
from fedmq.security.passwords import ITERATIONS

log = logging.getLogger(__name__)

NO_AUTH = (
    "fedmq broker refuses anonymous clients: give --password-file FILE (make one with "
    "`fedmq passwd FILE USER`), or --allow-anonymous for a trusted lab"
)


def add_broker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="identities, mosquitto_passwd format (`fedmq passwd`); re-read on change",
    )
    p.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="accept clients without a username (default: refuse them)",
    )
    p.add_argument(
        "--acl-file",
        metavar="FILE",
        help="topic ACL, Mosquitto acl_file format (default with --password-file: "
        "fedmq's own ACL, see `fedmq acl`)",
    )
    p.add_argument(
        "--cloud-user",
        default="cloud",
        metavar="NAME",
        help="username of the cloud node in fedmq's own ACL (default cloud)",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate: serve mqtts://")
    p.add_argument("--tls-key", metavar="PEM", help="its private key")
    p.add_argument(
        "--tls-ca", metavar="PEM", help="CA of client certificates: require one from every client"
    )


def check_broker_files(args: argparse.Namespace) -> None:
    """The broker's files, before it binds a port: each must be there and readable."""
    from fedmq.cli import checks

    for flag in ("password_file", "acl_file", "tls_cert", "tls_key", "tls_ca"):
        if getattr(args, flag, None):
            checks.readable_file("--" + flag.replace("_", "-"), getattr(args, flag))
    if (args.tls_key or args.tls_ca) and not args.tls_cert:
        raise ConfigError("--tls-key and --tls-ca need --tls-cert (the server certificate)")


def broker_security(args: argparse.Namespace) -> dict[str, Any]:
    """BrokerConfig keyword arguments from the broker flags; refuses an open broker by default."""
    from fedmq.security import fedmq_acl, load_acl, parse_acl

    if not args.password_file and not args.allow_anonymous:
        raise ConfigError(NO_AUTH)
    if args.acl_file:
        acl = load_acl(args.acl_file)
        if not args.password_file:
            log.warning("--acl-file without --password-file: any client may claim any username")
    elif args.password_file:
        acl = parse_acl(fedmq_acl(args.cloud_user), f"fedmq ACL (cloud user {args.cloud_user})")
    else:
        acl = None
    return {
        "allow_anonymous": args.allow_anonymous,
        "password_file": args.password_file,
        "acl": acl,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_ca": args.tls_ca,
    }


def cmd_passwd(args: argparse.Namespace) -> int:
    from fedmq.cli import checks
    from fedmq.security.passwords import check_username, set_password

    path = Path(args.file)
    check_username(args.user)
    checks.at_least("--iterations", args.iterations, 1)
    checks.writable_file("FILE", args.file)
    if args.delete:
        set_password(path, args.user, None)
        print(f"removed {args.user} from {path}")
        return 0
    password = _read_password(args.user, args.password_stdin)
    existed = set_password(path, args.user, password, iterations=args.iterations)
    print(f"{'updated' if existed else 'added'} {args.user} in {path} (mode 0600)")
    return 0


def _read_password(user: str, from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise ConfigError("no terminal to ask for the password: use --password-stdin")
        password = getpass.getpass(f"password for {user}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
    if not password:
        raise ConfigError("empty password")
    return password


def cmd_certs(args: argparse.Namespace) -> int:
    from fedmq.cli import checks
    from fedmq.security.certs import SERVER_HOSTS, make_trial_pki

    checks.at_least("--days", args.days, 1)
    checks.writable_dir("DIR", args.dir)
    for name in args.host:
        # A certificate names hosts that need not resolve here: only the form is checked.
        if not name or any(c.isspace() for c in name) or len(name) > 64:
            raise ConfigError(f"--host {name!r}: a host name or address of 1 to 64 characters")
    pki = make_trial_pki(args.dir, args.device, hosts=args.host or SERVER_HOSTS, days=args.days)
    for path in pki.written:
        print(f"wrote {path}")
    if not pki.written:
        print(f"nothing to do: every file is already in {pki.dir}")
    print(
        f"trust {pki.ca}; server {pki.server_cert} + {pki.server_key}; "
        f"device NAME: {pki.dir}/NAME.pem + NAME.key"
    )
    return 0


def cmd_acl(args: argparse.Namespace) -> int:
    from fedmq.security import check_username, fedmq_acl

    print(fedmq_acl(check_username(args.cloud_user)), end="")
    return 0


def add_commands(sub: Any) -> None:
    """Register passwd, certs and acl on the `fedmq` subparsers."""
    p = sub.add_parser("passwd", help="add or update a device identity in a password file")
    p.add_argument("file", metavar="FILE", help="password file (Mosquitto's format; created)")
    p.add_argument("user", metavar="USER", help="username: an edge's node id, or the cloud's")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (default: ask)",
    )
    p.add_argument("--delete", action="store_true", help="remove USER instead")
    p.add_argument(
        "--iterations",
        type=int,
        default=ITERATIONS,
        help=f"PBKDF2-SHA512 rounds; each connect costs the broker one (default {ITERATIONS})",
    )
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("certs", help="make a trial CA, server and device TLS certificates")
    p.add_argument("dir", metavar="DIR", help="where to write them (existing files are kept)")
    p.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="NAME",
        help="a client certificate for NAME (repeat)",
    )
    p.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="server name or address (repeat; default localhost 127.0.0.1 ::1)",
    )
    p.add_argument("--days", type=int, default=365, help="validity (default 365)")
    p.set_defaults(func=cmd_certs)

    p = sub.add_parser("acl", help="print fedmq's topic ACL (Mosquitto acl_file format)")
    p.add_argument(
        "--cloud-user",
        default="cloud",
        metavar="NAME",
        help="username of the cloud node (default cloud)",
    )
    p.set_defaults(func=cmd_acl)
