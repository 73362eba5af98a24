"""top-k 1% + int8 + error feedback: which change to the sparse path closes the gap to fp32 FedAvg?

An in-process mirror of `fedmq run` (no MQTT): digits, 10 clients, dirichlet:0.5, mlp, 5 local
epochs, batch 32, lr 0.05, momentum 0.9, every client every round, torch with one thread.

Per round, exactly as the runtime does it:
- edges hold `view` (what the downlink delivered); edge k trains `train_local(view, seed=
  derive_seed(seed, round, k))` and takes delta = trained - view (edge/runtime `_train_and_send`);
- lossy codecs: ErrorFeedback.compensate, `split_vector(..., max_payload=131072, rng=
  default_rng(train seed), decoded=...)`, ErrorFeedback.update(decoded);
- the cloud decodes every payload (`decode` + `assemble`, i.e. `chunk_values`) and aggregates with
  FedAvgAggregator (weight = num_samples) into its own model `flat`;
- downlink: `flat - view` encoded with the delta codec (int8+zstd, rng default_rng((seed,
  version))), view += decoded (cloud/runtime `_prepare_delta`); the fp32 baseline sends fp32.

Uplink bytes are the encoded payload bytes of every update message (TensorChunk envelopes, with
the same metrics the runtime attaches); `--overhead` (default 136 B, calibrated against `fedmq
run`'s socket counts in docs/benchmarks.md) is added per message for MQTT framing.

    .venv/bin/python bench/topk_study.py --variant fp32,topk1 --seeds 0
    .venv/bin/python bench/topk_study.py --variant all --seeds 0,1,2 --jobs 2
    .venv/bin/python bench/topk_study.py --list

Scores are on a validation split (`--val-fraction 0.2` of the training data, carved out before
partitioning); `--val-fraction 0` scores on the test split, for reporting a chosen rule only.

Finding (issue 20): the old fixed server lr 3 ("slr3") was chosen on the test split on the MLP
and sends the CNN to chance (validation, seeds 0-2: 0.098, 0.101, 0.540). The cloud's rule now
is "sparse" (cloud_node/sparse.py: each coordinate's FedAvg mean x min(2, W / senders' W), for
chunks at most 5% non-zero). Validation, median of per-seed differences against fp32 FedAvg:
MLP +0.35 points (seeds 0-5), CNN +0.35 (seeds 0-2); caps 3, 4, 5 and FedExP, FedAdam, FedYogi,
FedAdagrad behind the mean were worse on one model or the other (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from fedmq.cloud_node.fedadagrad import FedAdagrad
from fedmq.cloud_node.fedadam import FedAdam
from fedmq.cloud_node.fedavg import FedAvgAggregator
from fedmq.cloud_node.fedavgm import FedAvgM
from fedmq.cloud_node.fedyogi import FedYogi
from fedmq.cloud_node.serveropt import ServerOptimizer, ServerSGD
from fedmq.cloud_node.sparse import SparseAggregator
from fedmq.codec import CodecSpec, ErrorFeedback, assemble, decode, split_vector
from fedmq.codec.messages import TensorChunk
from fedmq.codec.tensors import select_topk
from fedmq.workloads import (
    PartitionSpec,
    TrainConfig,
    build_model,
    derive_seed,
    evaluate,
    get_flat,
    load_dataset,
    partition,
    train_local,
)
from fedmq.workloads.data import split_validation
from fedmq.workloads.models import layout

CLIENTS = 10
MODEL = "mlp"
VAL_FRACTION = 0.2  # tuning scores on a validation split; 0 scores on the test split
MAX_PAYLOAD = 128 * 1024
ROUNDS = 30
FP32_UPLINK_30 = 11_623_466  # docs/benchmarks.md, `fedmq run`, seed 0 (socket bytes)
# Socket bytes per update message beyond its payload, calibrated on docs/benchmarks.md: fp32
# (11,623,466 B, 300 msgs) and topk:0.01+int8+zstd (159,329 B) both come out at 135-136 B over
# the payload bytes this simulation encodes (MQTT PUBLISH header, topic, packet id, PUBACK).
OVERHEAD = 136


@dataclass(frozen=True)
class Variant:
    name: str
    codec: str = "topk:0.01+int8+zstd"  # uplink codec (its topk fraction is the final one)
    delta_codec: str = "int8+zstd"  # downlink: the model delta against what edges hold
    # DGC warm-up: the top-k fraction of rounds 1, 2, ... (then the codec's own fraction)
    warmup: tuple[float, ...] = ()
    per_layer: bool = False  # top-k per tensor of the layout (each keeps ceil(f * size))
    avg: str = "all"  # "all": divide by every sender's weight; "senders": per coordinate
    server_lr: float = 1.0  # flat += server_lr * (server momentum of) the FedAvg mean
    server_mom: float = 0.0
    local_epochs: int = 5
    ef_decay: float = 1.0  # residual *= ef_decay before it is added back
    dgc_mom: float = 0.0  # DGC momentum correction across rounds, with factor masking
    # a cloud server optimizer behind the FedAvg mean, "name:lr" ("fedadam:0.01"); replaces
    # server_lr / server_mom when set
    server: str = ""
    fedexp_eps: float = 0.0
    note: str = ""


def _warm(*fr: float) -> tuple[float, ...]:
    return tuple(fr)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", codec="fp32", delta_codec="fp32", note="baseline: fp32 up and down"),
        Variant("topk1", note="current: topk:0.01+int8+zstd, EF, global top-k, int8 downlink"),
        Variant("topk1-fp32down", delta_codec="fp32", note="current uplink, fp32 downlink"),
        Variant("topk1.5", codec="topk:0.015+int8+zstd", note="spend the spare budget evenly"),
        Variant("topk1-sr", codec="topk:0.01+int8:sr+zstd", note="stochastic rounding"),
        Variant("topk1-int4", codec="topk:0.01+int4+zstd"),
        Variant("topk2-int4", codec="topk:0.02+int4+zstd", note="2x k, half the value bits"),
        Variant("warm4", warmup=_warm(0.25, 0.0625, 0.015625), note="DGC 25%,6.25%,1.56%,1%"),
        Variant("warm3", warmup=_warm(0.0625, 0.025), note="6.25%,2.5%, then 1%"),
        Variant("warm-lin", warmup=_warm(0.1, 0.05, 0.03, 0.02, 0.015), note="10,5,3,2,1.5%"),
        Variant("layer", per_layer=True, note="per-tensor top-k"),
        Variant("layer-warm4", per_layer=True, warmup=_warm(0.25, 0.0625, 0.015625)),
        Variant("senders", avg="senders", note="mean over the senders of each coordinate"),
        Variant("slr2", server_lr=2.0, note="server lr 2"),
        Variant("smom5", server_mom=0.5, note="server momentum 0.5"),
        Variant("smom9-lr.1", server_mom=0.9, server_lr=0.1, note="server momentum 0.9, lr 0.1"),
        Variant("slr1.5", server_lr=1.5, note="server lr 1.5"),
        Variant("slr3", server_lr=3.0, note="server lr 3"),
        Variant("slr2.5", server_lr=2.5, note="server lr 2.5"),
        Variant("int4-slr3", codec="topk:0.01+int4+zstd", server_lr=3.0),
        Variant("topk2", codec="topk:0.02+int8+zstd", note="2% int8"),
        Variant("int4-slr2", codec="topk:0.01+int4+zstd", server_lr=2.0),
        Variant("topk1.5-slr2", codec="topk:0.015+int8+zstd", server_lr=2.0),
        Variant("warm-lin-slr2", warmup=_warm(0.1, 0.05, 0.03, 0.02, 0.015), server_lr=2.0),
        Variant(
            "fp32-slr2",
            codec="fp32",
            delta_codec="fp32",
            server_lr=2.0,
            note="control: does server lr 2 help fp32 too?",
        ),
        Variant("ep2", local_epochs=2, note="2 local epochs"),
        Variant("ef.9", ef_decay=0.9, note="residual decays 0.9 per round"),
        Variant("dgc.5", dgc_mom=0.5, note="DGC momentum correction m=0.5 + factor masking"),
        Variant("dgc.9", dgc_mom=0.9, note="DGC momentum correction m=0.9 + factor masking"),
        Variant("fedexp", avg="fedexp", note="FedExP extrapolated server step, eps 0"),
        Variant("fedexp-e3", avg="fedexp", fedexp_eps=1e-3, note="FedExP, eps 1e-3"),
        Variant("fp32-fedexp", codec="fp32", delta_codec="fp32", avg="fedexp"),
        Variant("sparse", avg="sparse", note="the cloud's SparseFedAvg (cloud_node/sparse.py)"),
        Variant("fp32-sparse", codec="fp32", delta_codec="fp32", avg="sparse"),
        Variant("int8", codec="int8+zstd", note="dense int8, FedAvg"),
        Variant("int8-sparse", codec="int8+zstd", avg="sparse", note="control: dense int8"),
        Variant("topk2-sparse", codec="topk:0.02+int8+zstd", avg="sparse"),
        Variant("topk5", codec="topk:0.05+int8+zstd", note="5% int8, FedAvg"),
        Variant("topk5-sparse", codec="topk:0.05+int8+zstd", avg="sparse"),
        Variant("topk10-sparse", codec="topk:0.1+int8+zstd", avg="sparse"),
        Variant("cov3", avg="cov:3", note="per coordinate: mean x min(3, W / senders' W)"),
        Variant("cov2", avg="cov:2", note="per coordinate: mean x min(2, W / senders' W)"),
        Variant("cov4", avg="cov:4", note="per coordinate: mean x min(4, W / senders' W)"),
        Variant("cov5", avg="cov:5", note="per coordinate: mean x min(5, W / senders' W)"),
        Variant("covsqrt", avg="covsqrt", note="per coordinate: mean x sqrt(W / senders' W)"),
        Variant("fp32-cov3", codec="fp32", delta_codec="fp32", avg="cov:3"),
        Variant("topk10", codec="topk:0.1+int8+zstd", note="10% int8, FedAvg"),
        Variant("topk10-fedexp", codec="topk:0.1+int8+zstd", avg="fedexp"),
        Variant("adam.01", server="fedadam:0.01", note="FedAdam lr 0.01 behind the mean"),
        Variant("adam.003", server="fedadam:0.003", note="FedAdam lr 0.003"),
        Variant("yogi.01", server="fedyogi:0.01", note="FedYogi lr 0.01"),
        Variant("adagrad.1", server="fedadagrad:0.1", note="FedAdagrad lr 0.1"),
        Variant("adagrad.03", server="fedadagrad:0.03", note="FedAdagrad lr 0.03"),
        Variant("fp32-adam.01", codec="fp32", delta_codec="fp32", server="fedadam:0.01"),
        Variant("fp32-adagrad.1", codec="fp32", delta_codec="fp32", server="fedadagrad:0.1"),
    )
}


@dataclass
class Result:
    variant: str
    seed: int
    rounds: int
    accuracy: float = 0.0
    curve: list[float] = field(default_factory=list)
    up_payload: int = 0  # encoded update payload bytes, all edges, all rounds
    up_messages: int = 0
    down_payload: int = 0  # downlink payload bytes as every edge receives them (x edges)
    down_messages: int = 0
    up_by_round: list[int] = field(default_factory=list)
    etas: list[float] = field(default_factory=list)  # avg="fedexp": the server step per round
    sparse_chunks: int = 0  # avg="sparse": chunks the aggregator treated as sparse
    seconds: float = 0.0


def _codec_for(v: Variant, rnd: int) -> CodecSpec:
    spec = CodecSpec.parse(v.codec)
    if spec.topk is not None and rnd <= len(v.warmup):
        spec = replace(spec, topk=max(spec.topk, v.warmup[rnd - 1]))
    return spec


def _layer_mask(x: np.ndarray, frac: float, shapes: list[int]) -> np.ndarray:
    """x with only each tensor's ceil(frac * size) largest-|x| kept (zeros elsewhere)."""
    out = np.zeros_like(x)
    start = 0
    for size in shapes:
        seg = x[start : start + size]
        keep = min(size, math.ceil(frac * size - 1e-9))
        idx = select_topk(seg, keep)
        out[start + idx] = seg[idx]
        start += size
    return out


def _cover(nnz: int, n: int) -> CodecSpec:
    """A top-k fraction (short decimal) whose keep(n) >= nnz: top-k then keeps all nonzeros."""
    for digits in range(2, 8):
        f = math.ceil(nnz / n * 10**digits) / 10**digits
        if (
            f > 0
            and math.ceil(f * n - 1e-9) >= nnz
            and CodecSpec(dtype="int8", topk=f).keep(n) >= nnz
        ):
            return CodecSpec(dtype="int8", topk=min(1.0, f))
    return CodecSpec(dtype="int8", topk=1.0)


def _payload_bytes(payloads: list[bytes]) -> int:
    return sum(len(p) for p in payloads)


def _server(v: Variant) -> ServerOptimizer | None:
    if not v.server:
        return None
    name, lr = v.server.split(":")
    makers: dict[str, Callable[..., ServerOptimizer]] = {
        "sgd": ServerSGD, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
        "fedavgm": FedAvgM,
    }  # fmt: skip
    return makers[name](lr=float(lr))


def simulate(
    v: Variant, seed: int, rounds: int, model: str = MODEL, val_fraction: float = VAL_FRACTION
) -> Result:
    """One run; accuracy is scored on the validation split (carved from the training data
    before partitioning) when val_fraction > 0, else on the held-out test split."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = Result(v.name, seed, rounds)
    train, test = load_dataset("digits", seed=seed)
    if val_fraction > 0:
        train, test = split_validation(train, val_fraction, seed=seed)  # never the test set
    optimizer = _server(v)
    parts = partition(train.y, CLIENTS, PartitionSpec.parse("dirichlet:0.5"), seed=seed)
    clients = [train.subset(p) for p in parts]
    net = build_model(
        model,
        num_features=train.num_features,
        num_classes=train.num_classes,
        feature_shape=train.feature_shape,
        seed=seed,
    )
    flat = get_flat(net)
    shapes = [int(np.prod(s)) for _, s in layout(net)]
    view = flat.copy()  # what every edge holds
    cfg = TrainConfig(local_epochs=v.local_epochs, batch_size=32, lr=0.05, momentum=0.9)
    feedback = [ErrorFeedback(flat.size) for _ in range(CLIENTS)]
    velocity = [np.zeros(flat.size, dtype=np.float32) for _ in range(CLIENTS)]  # dgc_mom only
    server_m = np.zeros(flat.size, dtype=np.float64)
    down = CodecSpec.parse(v.delta_codec)
    version = 0
    for rnd in range(1, rounds + 1):
        spec = _codec_for(v, rnd)
        agg: FedAvgAggregator | SparseAggregator = (
            SparseAggregator(flat) if v.avg == "sparse" else FedAvgAggregator(flat)
        )
        sent_sum = np.zeros(flat.size, dtype=np.float64)  # for avg="senders"
        sent_w = np.zeros(flat.size, dtype=np.float64)
        sq_norms = 0.0  # sum_i w_i ||delta_i||^2, for avg="fedexp"
        total_w = 0.0
        up_round = 0
        for k in range(CLIENTS):
            tseed = derive_seed(seed, rnd, k)
            out = train_local(model, view, clients[k], cfg, seed=tseed)
            delta = (out.flat - view).astype(np.float32)
            decoded: np.ndarray | None = None
            ef = feedback[k]
            if spec.lossy:
                if v.dgc_mom > 0:  # u = m u + delta; v = v + u (the EF residual plays v)
                    velocity[k] = (v.dgc_mom * velocity[k] + delta).astype(np.float32)
                    delta = velocity[k]
                if v.ef_decay != 1.0:
                    ef._residual = (ef._residual * v.ef_decay).astype(np.float32)
                delta = ef.compensate(delta)
                decoded = np.empty_like(delta)
            send_spec = spec
            if v.per_layer and spec.topk is not None:
                delta = _layer_mask(delta, spec.topk, shapes)
                cover = _cover(int(np.count_nonzero(delta)), delta.size)
                send_spec = replace(spec, topk=cover.topk)
            payloads = split_vector(
                delta, send_spec, max_payload=MAX_PAYLOAD, job="digits", sender=f"edge-{k}",
                role="update", round=rnd, version=version, num_samples=out.num_samples,
                rng=np.random.default_rng(tseed), decoded=decoded,
                metrics={"loss": out.loss, "accuracy": out.accuracy, "seconds": out.seconds},
            )  # fmt: skip
            if decoded is not None:
                ef.update(decoded)
                if v.dgc_mom > 0:  # momentum factor masking: what was sent leaves u too
                    velocity[k][decoded != 0] = 0.0
            nbytes = _payload_bytes(payloads)
            up_round += nbytes
            res.up_payload += nbytes
            res.up_messages += len(payloads)
            # the cloud: decode untrusted payloads exactly as the runtime does
            chunks = [decode(p, expect=TensorChunk) for p in payloads]
            got = assemble(chunks)
            if decoded is not None:
                assert np.array_equal(got, decoded)
            w = float(out.num_samples)
            for c in chunks:  # chunk by chunk, as RoundTracker feeds the aggregator
                agg.add(f"edge-{k}", c.offset, got[c.offset : c.offset + c.length], w)
            total_w += w
            sent_sum += w * got
            sent_w += w * (got != 0)
            sq_norms += w * float(np.dot(got.astype(np.float64), got.astype(np.float64)))
        res.up_by_round.append(up_round)
        if isinstance(agg, SparseAggregator):
            agg.result()
            res.sparse_chunks += agg.sparse_chunks
        if v.avg == "senders":
            mean = np.divide(sent_sum, sent_w, out=np.zeros_like(sent_sum), where=sent_w > 0)
        else:
            mean = agg.result().astype(np.float64) - flat.astype(np.float64)
        if v.avg.startswith("cov"):  # undo the dilution where it happened, within a cap
            ratio = np.divide(total_w, sent_w, out=np.ones_like(sent_w), where=sent_w > 0)
            cap = float(v.avg.split(":")[1]) if ":" in v.avg else math.inf
            mean = mean * (np.sqrt(ratio) if v.avg == "covsqrt" else np.minimum(cap, ratio))
        if v.avg == "fedexp":  # Jhunjhunwala et al. 2023, eq. (9), sample-weighted
            eta = max(1.0, sq_norms / total_w / (2 * (float(np.dot(mean, mean)) + v.fedexp_eps)))
            res.etas.append(eta)
            mean = eta * mean
        if optimizer is not None:
            flat = optimizer.step(flat, mean)
        else:
            server_m = v.server_mom * server_m + mean
            flat = (flat.astype(np.float64) + v.server_lr * server_m).astype(np.float32)
        version += 1  # noqa: SIM113  (the model version, as the cloud counts it)
        # downlink: the delta against what edges hold (`_prepare_delta`), received by every edge
        dec = np.empty_like(view)
        dl = split_vector(
            (flat - view).astype(np.float32), down, max_payload=MAX_PAYLOAD, job="digits",
            sender="cloud", role="delta", round=rnd + 1, version=version,
            rng=np.random.default_rng((seed, version)), decoded=dec,
        )  # fmt: skip
        view = view + dec
        res.down_payload += CLIENTS * _payload_bytes(dl)
        res.down_messages += CLIENTS * len(dl)
        res.curve.append(evaluate(model, flat, test)[1])
    res.accuracy = res.curve[-1]
    res.seconds = time.perf_counter() - t0
    return res


def _job(args: tuple[str, int, int, str, float]) -> dict:
    name, seed, rounds, model, val_fraction = args
    return asdict(simulate(VARIANTS[name], seed, rounds, model, val_fraction))


def _to_target(curve: list[float], target: float) -> int | None:
    for i, a in enumerate(curve):
        if a >= target - 1e-9:
            return i + 1
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="fp32,topk1", help="comma list, or 'all'")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--model", default=MODEL, choices=("mlp", "cnn"))
    ap.add_argument(
        "--val-fraction", type=float, default=VAL_FRACTION,
        help=f"score on this share of the training data, carved out before partitioning "
        f"(default {VAL_FRACTION}); 0: score on the held-out test split (reporting only)",
    )  # fmt: skip
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    ap.add_argument(
        "--overhead", type=int, default=OVERHEAD, help=f"bytes added per message ({OVERHEAD})"
    )
    ap.add_argument("--json", help="write every run (curves included) here")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for v in VARIANTS.values():
            print(f"{v.name:14s} {v.note}")
        return
    names = list(VARIANTS) if args.variant == "all" else args.variant.split(",")
    for n in names:
        if n not in VARIANTS:
            sys.exit(f"unknown variant {n!r}; --list shows them")
    if "fp32" not in names:
        names = ["fp32", *names]  # the baseline on the same seeds, always
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(n, s, args.rounds, args.model, args.val_fraction) for n in names for s in seeds]
    started = time.perf_counter()
    results: dict[tuple[str, int], dict] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for (n, s, *_), r in zip(jobs, pool.map(_job, jobs), strict=True):
            results[(n, s)] = r
            print(
                f"  {n:14s} seed {s}: acc {r['accuracy']:.4f} up {r['up_payload']:,} B "
                f"({r['up_messages']} msgs, {r['sparse_chunks']} sparse) {r['seconds']:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    ov = args.overhead
    base_up = statistics.median(
        results[("fp32", s)]["up_payload"] + ov * results[("fp32", s)]["up_messages"] for s in seeds
    )
    split = f"validation {args.val_fraction:g}" if args.val_fraction > 0 else "test"
    print(
        f"\ndigits {args.model} (scored on the {split} split), {CLIENTS} clients dirichlet:0.5, "
        f"{args.rounds} rounds, seeds {seeds}; "
        f"uplink = payload bytes + {ov} B/message; {time.perf_counter() - started:.0f}s\n"
    )
    head = " | ".join(f"seed {s}" for s in seeds)
    print(
        f"| variant | {head} | median | vs fp32 (pts, median of per-seed diffs) | uplink B "
        "(payload + MQTT) | fp32/uplink | rounds to fp32-1pt (per seed) | mean acc. rounds 26-30 "
        "| downlink B |"
    )
    print("|---|" + "---:|" * (len(seeds) + 7))
    for n in names:
        rs = [results[(n, s)] for s in seeds]
        accs = [r["accuracy"] for r in rs]
        diffs = [100 * (r["accuracy"] - results[("fp32", r["seed"])]["accuracy"]) for r in rs]
        ups = [r["up_payload"] + ov * r["up_messages"] for r in rs]
        up = statistics.median(ups)
        hits = [_to_target(r["curve"], results[("fp32", r["seed"])]["accuracy"] - 0.01) for r in rs]
        down = statistics.median(r["down_payload"] for r in rs)
        print(
            f"| {n} | " + " | ".join(f"{a:.4f}" for a in accs) + f" | {statistics.median(accs):.4f}"
            f" | {statistics.median(diffs):+.2f} ({', '.join(f'{d:+.2f}' for d in diffs)})"
            f" | {up:,.0f} | {base_up / up:.1f}x"
            f" | {', '.join(str(h) if h else '-' for h in hits)}"
            f" | {statistics.median(float(np.mean(r['curve'][-5:])) for r in rs):.4f}"
            f" | {down:,.0f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({f"{n}/{s}": r for (n, s), r in results.items()}, fh)


if __name__ == "__main__":
    main()
