"""`fedmq` entry point: argument parsing and wiring; the work happens in the runtimes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from fedmq import __version__
from fedmq.cli import brokerconf, checks, exits, options, security, serve, signals
from fedmq.cli.config import FIELDS, RunConfig, resolve, unknown_env
from fedmq.cli.connect import reach_broker
from fedmq.errors import ConfigError, FedmqError

log = logging.getLogger("fedmq")

HELP = {
    "clients": "edge nodes, one data shard each (default 10)",
    "rounds": "synchronous FedAvg rounds (default 30)",
    "local_epochs": "passes over local data per round (default 5)",
    "batch_size": "SGD batch size on the edges (default 32)",
    "lr": "SGD learning rate on the edges (default 0.05)",
    "momentum": "SGD momentum on the edges, restarted every round (default 0.9)",
    "model": "mlp (64-128-10, ReLU) or cnn (default mlp)",
    "dataset": "digits: scikit-learn's bundled 8x8 digits, no download (default)",
    "partition": "iid | dirichlet:ALPHA | shards:PER_CLIENT (default dirichlet:0.5)",
    "fraction": "share of online edges sampled per round (default 1.0)",
    "min_fit": "sample at least this many edges per round (default 1)",
    "quorum": "share of sampled edges that must deliver for a round to count (default 0.5)",
    "seed": "seed of data split, model init, sampling and training (default 0)",
    "codec": "uplink codec, e.g. fp32, fp16+zstd, int8+zstd (`fedmq codecs`); default: each "
    "profile's own, else fp32+zstd",
    "downlink_codec": "codec of the full global model, which joining edges fetch once "
    "(default fp32+zstd)",
    "delta_codec": "codec of each round's model change sent to every edge (default int8+zstd)",
    "max_payload": "largest MQTT message in bytes; models are chunked below it (default 131072)",
    "broker": "mqtt://HOST:PORT of an external broker (default: start an embedded one)",
    "job": "job name, the topic namespace fedmq/JOB/... (default digits)",
    "test_fraction": "held-out share evaluated at the cloud (default 0.2)",
    "round_timeout": "seconds the cloud waits for sampled updates (default 120)",
    "out": "run directory (default runs/TIME-JOB)",
    "threads": "torch threads per training call (default 1: edges share the cores)",
    "strategy": "aggregation: fedavg, or a Byzantine-robust median, trimmed_mean, krum, "
    "multikrum, normclip (default fedavg)",
    "sample_rounds": "FedAvg rounds the estimator runs ahead in-process to learn how updates "
    "compress (default 3)",
    "fleet": "device profiles per edge, e.g. esp32s3-wifi:4,pi4-ethernet:4,./mine.toml:2 "
    "(`fedmq profiles`); sets --clients, shapes each edge's link and compute",
    "server_opt": "server optimizer on the aggregate: none, serversgd, fedavgm, fedadam, "
    "fedyogi, fedadagrad (default none: plain FedAvg step; FedAvg scales coordinates that "
    "few edges' top-k chunks sent, at most 2x: cloud_node/sparse.py)",
    "server_lr": "the server optimizer's learning rate (default 0: its own default)",
    "prox_mu": "FedProx: proximal term mu/2 |w - w_global|^2 on the edges (default 0: off)",
    "mode": "sync: rounds with a deadline; async: FedBuff, the cloud applies every "
    "--buffer-size updates and never waits; chain: the model passes from edge to edge, "
    "a dead edge skipped after --round-timeout (default sync)",
    "buffer_size": "async: accepted updates per server step (default 5)",
    "max_staleness": "async: an update based on a version older than this many steps is "
    "rejected (default 10)",
    "staleness": "async: weight of a stale update: constant, poly:A (1/(1+s)^A), hinge:A:B, "
    "exp:A (default poly:0.5)",
    "head_only": "the last N edges train only the model's last layer and send only it "
    "(transfer learning on weak devices; sync mode; default 0)",
    "split": 'a given split: JSON {"edges": [[i, ...], ...], "test": [i, ...]} or .npz '
    "(test, edge_0, edge_1, ...) of sample indices into the dataset; sets --clients",
    "init_weights": ".npz of the model's named arrays (its state_dict names): the initial model",
    "save_split": "write the split this run uses to FILE (.json or .npz), to rerun it elsewhere",
    "drift": "edges' data over the rounds: none, grow:F (start with share F of the shard, "
    "all of it by the last round), labels:P (a label mix that rotates) (default none)",
}


# Run settings `fedmq cloud` has no use for: the edges bring their own profiles, threads and
# head-only training; the estimator's run-ahead is `fedmq run`'s.
CLOUD_SKIP = ("fleet", "head_only", "threads", "sample_rounds", "save_split")
# An estimate runs nothing: it writes no run directory and talks to no broker.
ESTIMATE_SKIP = ("out", "broker", "save_split")
# Commands that write a run directory, so --out must be writable before they start.
WRITES_OUT = ("run", "cloud", "centralized")


class Parser(argparse.ArgumentParser):
    """argparse that answers bad input in one line (its own error() prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_run_flags(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML file of settings (flags override it)")
    for name, f in FIELDS.items():
        if name in skip:
            continue
        kind = type(f.default)
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind if kind in (int, float) else str,
            default=None,
            metavar=name.upper(),
            help=HELP.get(name, ""),
        )


def _add_identity_flags(p: argparse.ArgumentParser) -> None:
    """How a node proves who it is to the broker (docs/security.md)."""
    g = p.add_argument_group("broker identity and TLS")
    g.add_argument("--username", default=None, help="broker username (edges: their --id)")
    g.add_argument(
        "--password",
        default=None,
        help="broker password (default: $FEDMQ_PASSWORD; a flag shows in `ps`, the env does not)",
    )
    g.add_argument("--tls-ca", default=None, help="CA file that signed the broker's certificate")
    g.add_argument("--tls-cert", default=None, help="client certificate, if the broker wants one")
    g.add_argument("--tls-key", default=None, help="the client certificate's private key")


def _identity(args: argparse.Namespace) -> dict[str, Any]:
    import os

    return {
        "username": args.username,
        "password": args.password
        if args.password is not None
        else os.environ.get("FEDMQ_PASSWORD"),
        "tls_ca": args.tls_ca,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
    }


def _add_connect_flag(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=default,
        metavar="S",
        help=f"seconds to wait for the broker at start, reporting every {5:g} s; then exit "
        f"with code 2 (default {default:g})",
    )


def _run_config(args: argparse.Namespace) -> RunConfig:
    """The resolved config, every value checked (no torch, no network) before anything starts."""
    flags = {name: getattr(args, name, None) for name in FIELDS}
    cfg = resolve(args.config, flags)
    compares_only = getattr(args, "no_federated", False) or getattr(args, "federated", None)
    checks.run_config(cfg, writes=args.command in WRITES_OUT and not compares_only)
    return cfg


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # amqtt and its state machine log every connection at INFO, and warn at shutdown about
    # queued presence messages nobody needs any more.
    for noisy in ("amqtt", "transitions", "mqtt"):
        logging.getLogger(noisy).setLevel(max(logging.ERROR, logging.getLogger().level))


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _run_config(args)
    options.identity(args)
    if cfg.broker:
        reach_broker("run", cfg.broker, {}, args.connect_timeout)
    # torch and the runtimes load only now: a refusal above comes at once.
    from fedmq.cli.launcher import run_federated
    from fedmq.cli.output import Progress, summary_table
    from fedmq.cli.planning import prepare

    setup = prepare(cfg)  # the data, its split, the fleet's memory and payload checks
    cfg = setup.cfg  # --clients and --max-payload as the fleet sets them
    log.info("resolved config: %s", cfg.as_dict())
    # The streams as they are now: output.py's defaults are bound when it is first imported.
    progress = Progress(cfg.rounds, sys.stdout, mode=cfg.mode)
    broker = cfg.broker or "an embedded broker"
    edges = f"{cfg.clients} edges" + (f" (fleet {cfg.fleet})" if cfg.fleet else "")
    progress.header(
        f"fedmq run: {edges}, {cfg.rounds} rounds, {cfg.model} on {cfg.dataset} "
        f"({cfg.partition}), codec {cfg.codec or 'auto'}, on {broker}"
    )
    summary, out = asyncio.run(
        run_federated(cfg, on_round=None if args.quiet else progress, setup=setup)
    )
    summary_table(summary, str(out), sys.stdout)
    if not args.quiet:
        from fedmq.cli.output import comparison_table
        from fedmq.cli.plots import load_run

        comparison_table(load_run(out)[0], summary, sys.stdout)
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from fedmq.broker import BrokerConfig, EmbeddedBroker
    from fedmq.cli.security import broker_security

    checks.port("--port", args.port, zero=True)
    checks.host("--host", args.host)
    checks.at_least("--max-packet", args.max_packet, 1024)
    security.check_broker_files(args)
    config = BrokerConfig(
        host=args.host, port=args.port, max_packet=args.max_packet, **broker_security(args)
    )

    async def serve() -> None:
        async with EmbeddedBroker(config) as broker:
            # Said once it listens: a broker that cannot start has one line to say, not two.
            if not config.tls_cert and args.host not in ("127.0.0.1", "::1", "localhost"):
                log.warning("no --tls-cert: passwords and models cross the network in clear")
            auth = "anonymous allowed" if config.allow_anonymous else "passwords required"
            acl = config.acl.source if config.acl else "none"
            print(f"fedmq broker listening on {broker.url}, {auth}, ACL: {acl} (Ctrl-C to stop)",
                  flush=True)  # fmt: skip
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


def cmd_cloud(args: argparse.Namespace) -> int:
    cfg = _run_config(args)
    if not cfg.broker:
        raise ConfigError("fedmq cloud needs --broker mqtt://HOST:PORT (start one: fedmq broker)")
    options.cloud(args)
    reach_broker("cloud", cfg.broker, _identity(args), args.connect_timeout)
    from pathlib import Path

    from fedmq.cli.output import departed_note, human_bytes
    from fedmq.cli.planning import cloud_config, make_strategy
    from fedmq.cli.rundir import append_jsonl, make_run_dir, save_model, write_json, write_jsonl
    from fedmq.cloud_node import CloudNode, RoundRecord

    if args.resume and cfg.out and Path(cfg.out).is_dir():
        out = Path(cfg.out)  # the same run goes on in the same directory
    else:
        out = make_run_dir(cfg.out, cfg.job)
    write_json(out / "config.json", {"run": cfg.as_dict(), "role": "cloud"})
    node = CloudNode(
        cloud_config(cfg, cfg.broker, min_clients=args.min_clients,
                     start_timeout=args.start_timeout, node_id=args.node_id,
                     checkpoint=args.checkpoint or "", resume=args.resume,
                     trusted_keys=args.trusted_keys or "", **_identity(args)),
        strategy=make_strategy(cfg),
    )  # fmt: skip
    started = time.perf_counter()
    # Only now: the broker answered above, so "waiting" means waiting for edges, not for it.
    print(
        f"fedmq cloud: job {cfg.job} on {cfg.broker}; waiting for "
        f"{args.min_clients or cfg.clients} edges",
        flush=True,
    )

    def on_round(r: RoundRecord) -> None:
        append_jsonl(out / "rounds.jsonl", {**vars(r), "wall": time.perf_counter() - started})
        print(
            f"round {r.round}/{cfg.rounds}  acc {r.accuracy:.4f}  "
            f"in {human_bytes(r.cloud_received)}  out {human_bytes(r.cloud_sent)}  "
            f"{len(r.participants)}/{len(r.selected)} edges  {r.seconds:.1f}s"
            f"{departed_note(r.departed)}",
            flush=True,
        )

    # SIGTERM unwinds the node, so its goodbye tells the edges at once (cli.signals).
    result = signals.run(node.run(on_round=on_round))
    if result.resumed_from:
        print(f"resumed after round {result.resumed_from} from {args.checkpoint}")
        # The whole history, across restarts: a kill between a checkpoint and its line here
        # would otherwise leave a round out.
        write_jsonl(out / "rounds.jsonl", [vars(r) for r in result.records])
    save_model(out / "model.pt", result.final_flat, result.layout, {"version": result.version})
    summary = {
        "final_accuracy": result.final_accuracy, "rounds": len(result.records),
        "wall_seconds": time.perf_counter() - started, "cloud_bytes_sent": node.meter.sent,
        "cloud_bytes_received": node.meter.received, "clients": cfg.clients, "codec": cfg.codec,
        "broker": cfg.broker, "malformed_messages": result.malformed,
        "forged_chunks": result.forged, "resumed_from": result.resumed_from,
        "version": result.version,
    }  # fmt: skip
    write_json(out / "summary.json", summary)
    print(f"final accuracy {result.final_accuracy:.4f}; run directory {out}")
    return 0


def cmd_edge(args: argparse.Namespace) -> int:
    profile = options.edge(args)
    reach_broker(f"edge {args.id}", args.broker, _identity(args), args.connect_timeout)

    import torch

    from fedmq.cli.planning import keepalive_for
    from fedmq.edge_node import EdgeConfig, EdgeNode, EdgeReport
    from fedmq.tinyml_profiles.shaper import LinkShaper
    from fedmq.transport import parse_broker_url

    torch.set_num_threads(args.threads)

    async def serve() -> EdgeReport:
        async with contextlib.AsyncExitStack() as stack:
            url = args.broker
            if profile is not None:
                # Emulate the device here too: its link through a local shaper, its speed.
                address = parse_broker_url(url)
                shaper = LinkShaper(profile.link, address.host, address.port)
                url = (await stack.enter_async_context(shaper)).url
            config = EdgeConfig(
                broker=url,
                node_id=args.id,
                job=args.job,
                shard=args.shard,
                profile=profile.name if profile else "",
                codec=args.codec or (profile.codec if profile else ""),
                compute_flops=profile.flops if profile else 0.0,
                keepalive=keepalive_for(profile, profile.link.max_payload) if profile else 20,
                sign_key=args.sign_key or "",
                train=args.train or (profile.train if profile else "all"),
                **_identity(args),
            )
            return await EdgeNode(config).run()

    shaped = f" as {profile.name}" if profile else ""
    print(f"fedmq edge {args.id}: job {args.job} on {args.broker}{shaped}", flush=True)
    report = signals.run(serve())  # SIGTERM: the goodbye, so the round stops waiting for us
    print(
        f"edge {report.node_id}: trained {report.rounds_trained} rounds, sent "
        f"{report.bytes_sent:,} B, received {report.bytes_received:,} B"
    )
    return 0


def cmd_centralized(args: argparse.Namespace) -> int:
    cfg = _run_config(args)
    summary = options.centralized(args)
    from fedmq.workloads import TrainConfig, load_dataset, train_centralized

    train, test = load_dataset(cfg.dataset, seed=cfg.seed, test_fraction=cfg.test_fraction)
    epochs = cfg.rounds * cfg.local_epochs  # the same sample-epochs as the federated run
    tcfg = TrainConfig(
        local_epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum
    )
    result, accuracy = train_centralized(cfg.model, train, test, tcfg, epochs=epochs, seed=cfg.seed)
    print(f"centralized: {cfg.model} on pooled {cfg.dataset}, {epochs} epochs: "
          f"accuracy {accuracy:.4f} ({result.seconds:.1f} s)")  # fmt: skip
    if args.no_federated:
        return 0
    if summary is not None:  # that run's own figures: its flags were not given here
        fed, source = float(summary["final_accuracy"]), args.federated
        shape = (f"{summary.get('clients', '?')} edges, {summary.get('rounds', '?')} rounds "
                 f"({summary.get('partition', '?')})")  # fmt: skip
    else:
        from fedmq.cli.launcher import run_federated

        summary, out = asyncio.run(run_federated(cfg))
        fed, source = summary["final_accuracy"], str(out)
        shape = (f"{cfg.clients} edges, {cfg.rounds} rounds x {cfg.local_epochs} epochs "
                 f"({cfg.partition})")  # fmt: skip
    print(f"federated:   {shape}: accuracy {fed:.4f}  [{source}]")
    print(f"gap (centralized - federated): {accuracy - fed:+.4f}")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from fedmq.tinyml_profiles import catalogue, format_bps, format_bytes, get_profile

    if args.action == "show":
        if not args.name:
            raise FedmqError("fedmq profiles show NAME (or the path of a .toml file)")
        p = get_profile(args.name)
        link = p.link
        print(f"{p.name}: {p.description}")
        rows = [
            ("uplink", format_bps(link.up_bps)), ("downlink", format_bps(link.down_bps)),
            ("rtt", f"{link.rtt_ms:g} ms (jitter +-{link.jitter_ms:g} ms)"),
            ("outages", f"every ~{link.outage_every_s:g} s for {link.outage_s:g} s"
             if link.outage_every_s else "none"),
            ("max payload", f"{link.max_payload:,} B"), ("RAM", format_bytes(p.ram_bytes)),
            ("compute", f"{p.flops:.3g} FLOP/s"), ("default codec", p.codec), ("file", p.path),
        ]  # fmt: skip
        for key, value in rows:
            print(f"  {key:<14} {value}")
        print("  sources:")
        for key, value in p.sources.items():
            print(f"    {key:<8} {value}")
        return 0
    profiles = catalogue()
    print(f"{len(profiles)} built-in profiles (`fedmq profiles show NAME` for sources):")
    for name, p in profiles.items():
        print(f"  {name:<18} {p.summary()}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    import json

    import torch

    from fedmq.cli.output import human_bytes
    from fedmq.cli.planning import plan_estimate, prepare, resolve_host_speed, round_timeout_for

    setup = prepare(_run_config(args))
    cfg = setup.cfg
    torch.set_num_threads(cfg.threads)  # as a run trains: results are bit-identical per count
    host = resolve_host_speed(setup, given=args.host_speed, recalibrate=args.recalibrate)
    est = plan_estimate(setup, cfg.round_timeout, host)
    data = {**est.as_dict(), "clients": cfg.clients, "rounds": cfg.rounds, "model": cfg.model,
            "codecs": setup.codecs, "fleet": cfg.fleet, "mode": cfg.mode,
            "round_timeout": round_timeout_for(setup, est),
            "host_speed": host.as_dict()}  # fmt: skip
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print(
        f"estimate: {cfg.clients} edges, {cfg.rounds} rounds, {cfg.model} "
        f"({setup.cost.params:,} params), codecs {', '.join(sorted(set(setup.codecs)))}"
    )
    print(f"  {host.describe()}")
    print(f"  one update on the wire: "
          f"{', '.join(f'{k} {human_bytes(v)}' for k, v in list(est.update_bytes.items())[:3])}"
          f"{' ...' if len(est.update_bytes) > 3 else ''}; the global model "
          f"{human_bytes(est.model_bytes)}")  # fmt: skip
    print(f"  {'':>10} {'fedmq estimate':>16} {'naive W x C x R':>16}")
    print(f"  {'up':>10} {human_bytes(est.bytes_up):>16} {human_bytes(est.naive_bytes):>16}")
    print(f"  {'down':>10} {human_bytes(est.bytes_down):>16} {human_bytes(est.naive_bytes):>16}")
    first, (up, down, bound) = est.first_round(), est.steady_round()
    # Round 1 brings every edge the whole model; later rounds bring only its change.
    print(
        f"  round 1:      up {human_bytes(first.bytes_up)}, down {human_bytes(first.bytes_down)}; "
        f"time bound {first.bound_seconds:.2f} s (slowest: {first.slowest or 'host'})"
    )
    if len(est.rounds) > 1:
        print(
            f"  rounds 2-{len(est.rounds)}: up {human_bytes(round(up))}, "
            f"down {human_bytes(round(down))} per round (mean); time bound {bound:.2f} s"
        )
    print(f"  whole run, link-limited: {est.seconds:.1f} s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedmq.cli.report import report

    return report(Path(args.run_dir))


def cmd_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedmq.security.keys import generate_keypair

    for device in args.device:
        checks.topic_name("--device", device)
    checks.writable_dir("DIR", args.dir)

    for device in args.device:
        private, public = generate_keypair(Path(args.dir), device, overwrite=args.force)
        print(f"{device}: private {private} (keep on the device), public {public} (enrol)")
    print(f"enrol at the cloud: fedmq cloud --trusted-keys {args.dir} (only .pub files needed)")
    return 0


def cmd_codecs(args: argparse.Namespace) -> int:
    from fedmq.codec import codec_names

    for spec, description in codec_names():
        print(f"  {spec:<22} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fedmq",
        description="Federated learning over MQTT for IoT and edge devices.",
        epilog="Start with `fedmq run`: an embedded broker, a cloud node and 10 edges on one "
        "machine. Settings come from defaults < --config FILE < FEDMQ_* env < flags.",
    )
    parser.add_argument("--version", action="version", version=f"fedmq {__version__}")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="debug|info|warning (default)|error",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="broker + cloud + N edges in one process, real training")
    _add_run_flags(p)
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    _add_connect_flag(p, 10.0)  # it starts everything itself: an external broker is up already
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("broker", help="run the embedded MQTT broker")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="port (default 1883; 0 = any free)")
    p.add_argument(
        "--max-packet",
        type=int,
        default=2 << 20,
        help="largest MQTT packet accepted, bytes (default 2097152)",
    )
    security.add_broker_flags(p)  # auth, ACL, TLS
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("cloud", help="the cloud node against a running broker")
    _add_run_flags(p, skip=CLOUD_SKIP)
    p.add_argument(
        "--min-clients",
        type=int,
        default=0,
        help="edges online before round 1 (default: --clients)",
    )
    p.add_argument(
        "--start-timeout", type=float, default=300.0, help="seconds to wait for them (default 300)"
    )
    p.add_argument("--node-id", default="cloud", help="the cloud's name (= its broker username)")
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="write the cloud's state here after every round (atomically)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint if it exists (same job, data, model and strategy)",
    )
    p.add_argument(
        "--trusted-keys",
        metavar="DIR",
        help="only count updates signed by the <edge>.pub keys in DIR (`fedmq keys`)",
    )
    _add_identity_flags(p)
    _add_connect_flag(p, 30.0)
    p.set_defaults(func=cmd_cloud)

    p = sub.add_parser("edge", help="one edge node against a running broker")
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT")
    p.add_argument("--id", required=True, help="unique edge name, e.g. edge-3")
    p.add_argument(
        "--shard",
        type=int,
        default=None,
        help="data shard index (default: the number at the end of --id)",
    )
    p.add_argument("--job", default="digits", help="job name (default digits)")
    p.add_argument(
        "--profile",
        default="",
        help="emulate this device profile (name or .toml): its link through a local shaper, "
        "its compute speed, its default codec",
    )
    p.add_argument("--codec", default="", help="uplink codec (default: the profile's or task's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--sign-key", metavar="FILE", help="Ed25519 key to sign every update with (`fedmq keys`)"
    )
    p.add_argument(
        "--train",
        choices=("all", "head"),
        default=None,
        help="train the whole model, or only its last layer (default: the profile's, else all)",
    )
    _add_identity_flags(p)
    _add_connect_flag(p, 60.0)
    p.set_defaults(func=cmd_edge)

    p = sub.add_parser("keys", help="make Ed25519 signing keys for edges (enrol the .pub files)")
    p.add_argument("dir", help="folder for <edge>.key (stays on the device) and <edge>.pub")
    p.add_argument("--device", action="append", required=True, help="edge id; repeat per edge")
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("centralized", help="train on pooled data; compare with federated")
    _add_run_flags(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--federated",
        metavar="RUN_DIR",
        help="compare with this run instead of running federated now",
    )
    group.add_argument("--no-federated", action="store_true", help="centralized only")
    p.set_defaults(func=cmd_centralized)

    p = sub.add_parser("profiles", help="list device/link profiles, or show one with sources")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", help="profile name or .toml path (with show)")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("estimate", help="bytes and time of a run, before running it")
    _add_run_flags(p, skip=ESTIMATE_SKIP)
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.add_argument(
        "--host-speed", type=float, default=None, metavar="FLOP/S",
        help="this host's training speed; default: measured once per machine and cached",
    )  # fmt: skip
    p.add_argument(
        "--recalibrate", action="store_true", help="measure the host speed again and cache it"
    )
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("report", help="measured vs estimated table and plots of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("codecs", help="list the update codecs")
    p.set_defaults(func=cmd_codecs)
    security.add_commands(sub)  # passwd, certs, acl
    _add_identity_flags(serve.add_parser(sub))  # `fedmq serve`: the same identity and TLS
    brokerconf.add_parser(sub)  # `fedmq broker-config`
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code and last line as `cli.exits` says."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if extra:  # named by the command, whose --help lists what it takes
        prog = f"fedmq {args.command}"
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extra)} "
                       f"(see {prog} --help)\n")  # fmt: skip
    _setup_logging(args.log_level)
    for warning in unknown_env(os.environ):
        print(f"fedmq {args.command}: warning: {warning}", file=sys.stderr)
    try:
        code: Any = args.func(args)
        return int(code)
    except BaseException as exc:  # sorted below; anything else is re-raised
        return exits.exit_code(args.command, exc)


if __name__ == "__main__":
    sys.exit(main())
