"""Codec micro-benchmark: fedmq codecs against peers' wire formats (issue: compression codecs).

    .venv/bin/python bench/codecs.py [--repeats 5] [--json out.json] [--plot out.png]

Inputs: real deltas (trained minus global) of a few digits clients for the "mlp" and "cnn"
models, made with fedmq.workloads as `fedmq run` makes them, and a synthetic ~1M-parameter
delta (N(0, 1e-3) plus a few heavy-tailed entries). Every fedmq codec goes through the real
chunked path: `split_vector` at --max-payload (128 KiB), then `decode` of every payload and
`assemble`, so its bytes include the envelope headers. Peers (bench/_peers.py) encode the
update as their framework holds it, with no envelope.

Per input and codec: bytes on the wire, ratio vs raw fp32 (4 bytes x parameters), encode and
decode MB/s (MB of float32 input per second, median of --repeats timed repeats, taken
round-robin over all codecs so that load on the shared machine hits them alike), relative L2
error ||x - y|| / ||x|| and whether decoding is bit-exact. The machine is shared: read medians
and same-run ratios, not single absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from _peers import PEERS, Layout, Peer

from fedmq.codec import CodecSpec, TensorChunk, assemble, decode, split_vector

CODECS = [
    "fp32", "fp32+zstd", "fp16+zstd", "bf16+zstd", "int8+zstd", "int8:sr+zstd", "int4+zstd",
    "int4:sr+zstd", "sign+zstd", "topk:0.1+int8+zstd", "topk:0.01+int8+zstd",
    "topk:0.01+fp16+zstd", "topk:0.01+int4+zstd", "topk:0.01+sign+zstd",
]  # fmt: skip
IDS = {"job": "bench", "sender": "edge-0", "role": "update", "round": 1, "version": 0}


@dataclass
class Input:
    name: str
    layout: Layout
    deltas: list[np.ndarray]  # float32 (P,) each


@dataclass
class Row:
    input: str
    codec: str
    peer: bool
    params: int  # per delta
    bytes: int  # mean per delta
    ratio: float  # raw fp32 bytes / bytes
    encode_mbs: float
    decode_mbs: float
    roundtrip_mbs: float  # input MB / (encode + decode seconds)
    rel_l2: float
    bit_exact: bool


def digits_inputs(clients: int, seed: int) -> list[Input]:
    """Deltas of `clients` edges after one round of local training, as `fedmq run` computes."""
    import torch

    from fedmq.workloads import (
        PartitionSpec,
        TrainConfig,
        build_model,
        derive_seed,
        get_flat,
        layout,
        load_dataset,
        partition,
        train_local,
    )

    torch.set_num_threads(1)
    train, _ = load_dataset("digits", seed=seed)
    shards = partition(train.y, 10, PartitionSpec("dirichlet", 0.5), seed=seed)
    cfg = TrainConfig(local_epochs=5, batch_size=32, lr=0.05, momentum=0.9)
    out = []
    for model_name in ("mlp", "cnn"):
        model = build_model(
            model_name, num_features=train.x.shape[1], num_classes=train.num_classes,
            feature_shape=train.feature_shape, seed=seed,
        )  # fmt: skip
        base = get_flat(model)
        deltas = []
        for c in range(clients):
            result = train_local(
                model_name, base, train.subset(shards[c]), cfg, seed=derive_seed(seed, 1, c)
            )
            deltas.append((result.flat - base).astype(np.float32))
        out.append(Input(f"digits-{model_name}", layout(model), deltas))
    return out


def synthetic_input(size: int, seed: int) -> Input:
    """N(0, 1e-3) plus 0.01% heavy-tailed entries (Student t, 2 dof, x 1e-2), float32."""
    rng = np.random.default_rng(seed)
    delta = rng.normal(0.0, 1e-3, size)
    spikes = rng.choice(size, max(1, size // 10_000), replace=False)
    delta[spikes] = rng.standard_t(2, spikes.size) * 1e-2
    rows = size // 1000
    shapes: Layout = [("layer1.weight", (rows, 1000)), ("layer1.bias", (size - rows * 1000,))]
    return Input(f"synthetic-{size / 1e6:g}M", shapes, [delta.astype(np.float32)])


@dataclass
class Job:
    """One codec on one input, prepared: what to time, and the batch size of each timing."""

    input: Input
    codec: Peer
    peer: bool
    calls: list[tuple[Callable[[], object], Callable[[], object]]]  # (encode, decode) per delta
    inner: int = 1  # calls per timed batch (>= 20 ms a batch)
    enc: list[float] | None = None  # seconds per delta, one per repeat
    dec: list[float] | None = None


def time_round_robin(jobs: list[Job], repeats: int) -> None:
    """Median-ready timings: repeat r of every job runs before repeat r+1 of any.

    The machine is shared: interleaving spreads load spikes over all codecs alike, so
    same-run ratios (fedmq codec vs pickle+gzip) stay fair.
    """
    for job in jobs:  # warm-up and batch size
        t0 = time.perf_counter()
        for enc, dec in job.calls:
            enc()
            dec()
        job.inner = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))
        job.enc, job.dec = [], []
    for _ in range(repeats):
        for job in jobs:
            assert job.enc is not None and job.dec is not None
            for side, times in ((0, job.enc), (1, job.dec)):
                t0 = time.perf_counter()
                for _ in range(job.inner):
                    for pair in job.calls:
                        pair[side]()
                times.append((time.perf_counter() - t0) / job.inner)


def fedmq_codec(text: str, max_payload: int, seed: int) -> Peer:
    spec = CodecSpec.parse(text)

    def encode(flat: object) -> list[bytes]:
        rng = np.random.default_rng(seed) if spec.stochastic else None  # a caller makes one
        return split_vector(flat, spec, max_payload=max_payload, rng=rng, **IDS)  # type: ignore[arg-type]

    def decode_all(payloads: list[bytes]) -> np.ndarray:
        return assemble([decode(p, expect=TensorChunk) for p in payloads])

    return Peer(text, lambda flat, _: flat, encode, decode_all)


def prepare(inp: Input, codec: Peer, peer: bool) -> Job:
    calls = []
    for delta in inp.deltas:
        held = codec.prepare(delta, inp.layout)
        blobs = codec.encode(held)
        calls.append(
            (lambda h=held: codec.encode(h), lambda b=blobs: codec.decode(b))  # type: ignore[misc]
        )
    return Job(inp, codec, peer, calls)


def result(job: Job) -> Row:
    inp, codec = job.input, job.codec
    raw_bytes, sizes, err2, norm2, exact = 0, [], 0.0, 0.0, True
    for delta in inp.deltas:
        blobs = codec.encode(codec.prepare(delta, inp.layout))
        out = codec.decode(blobs)
        raw_bytes += delta.nbytes
        sizes.append(sum(len(b) for b in blobs))
        diff = out.astype(np.float64) - delta.astype(np.float64)
        err2 += float(diff @ diff)
        norm2 += float(delta.astype(np.float64) @ delta.astype(np.float64))
        exact = exact and out.dtype == np.float32 and out.tobytes() == delta.tobytes()
    assert job.enc and job.dec
    enc_t, dec_t = statistics.median(job.enc), statistics.median(job.dec)
    mb = raw_bytes / 1e6
    return Row(
        input=inp.name, codec=codec.name, peer=job.peer, params=inp.deltas[0].size,
        bytes=round(statistics.mean(sizes)), ratio=raw_bytes / sum(sizes),
        encode_mbs=mb / enc_t, decode_mbs=mb / dec_t, roundtrip_mbs=mb / (enc_t + dec_t),
        rel_l2=(err2 / norm2) ** 0.5 if norm2 else 0.0, bit_exact=exact,
    )  # fmt: skip


def table(rows: list[Row]) -> str:
    head = (
        "| input | codec | bytes / delta | ratio vs fp32 | encode MB/s | decode MB/s | "
        "enc+dec MB/s | rel. L2 error | bit-exact |\n|---|---|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        name = f"*{r.codec}* (peer)" if r.peer else f"`{r.codec}`"
        err = "0" if r.rel_l2 == 0 else f"{r.rel_l2:.2e}"
        lines.append(
            f"| {r.input} | {name} | {r.bytes:,} | {r.ratio:.2f}x | {r.encode_mbs:,.0f} | "
            f"{r.decode_mbs:,.0f} | {r.roundtrip_mbs:,.0f} | {err} | "
            f"{'yes' if r.bit_exact else 'no'} |"
        )
    return "\n".join(lines)


def checks(rows: list[Row]) -> list[str]:
    """The issue's codec-level acceptance figures, PASS/FAIL, from this run's rows."""
    by = {(r.input, r.codec): r for r in rows}
    inputs = list(dict.fromkeys(r.input for r in rows))
    out = []

    def line(ok: bool, text: str) -> None:
        out.append(f"{'PASS' if ok else 'FAIL'}  {text}")

    for inp in inputs:
        if (lossless := by.get((inp, "fp32+zstd"))) is not None:
            line(lossless.ratio >= 1.15 and lossless.bit_exact,
                 f"{inp}: fp32+zstd {lossless.ratio:.3f}x (>= 1.15x), bit-exact "
                 f"{lossless.bit_exact}")  # fmt: skip
        if (int8 := by.get((inp, "int8+zstd"))) is not None:
            line(int8.roundtrip_mbs >= 100,
                 f"{inp}: int8+zstd encode+decode {int8.roundtrip_mbs:,.0f} MB/s (>= 100), "
                 f"{int8.ratio:.1f}x smaller than fp32")  # fmt: skip
        if (topk := by.get((inp, "topk:0.01+int8+zstd"))) is not None:
            share = 1 / topk.ratio
            line(share < 0.02, f"{inp}: topk:0.01+int8+zstd {100 * share:.2f}% of fp32 (< 2%)")
        baseline = by.get((inp, "FedML pickle+gzip"))
        if baseline is None:
            continue
        for r in rows:
            if r.input != inp or r.peer:
                continue
            speed = r.roundtrip_mbs / baseline.roundtrip_mbs
            smaller = r.bytes <= baseline.bytes
            line(speed >= 5 and smaller,
                 f"{inp}: {r.codec} {speed:.1f}x faster than pickle+gzip (>= 5x), "
                 f"{r.bytes:,} vs {baseline.bytes:,} B (<=)")  # fmt: skip
    return out


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-6  # bit-exact codecs have no error; draw them on a floor line
    fig, ax = plt.subplots(figsize=(10, 6.5))
    inputs = list(dict.fromkeys(r.input for r in rows))
    looks = [("o", "tab:blue"), ("s", "tab:orange"), ("D", "tab:green"), ("^", "tab:purple")]
    styles = {inp: looks[i % len(looks)] for i, inp in enumerate(inputs)}
    labelled = inputs[min(1, len(inputs) - 1)]  # annotate one input's points, not all
    for inp, (marker, colour) in styles.items():
        for peer in (False, True):
            mine = [r for r in rows if r.input == inp and r.peer is peer]
            xs = [max(r.rel_l2, floor) for r in mine]
            ax.scatter(xs, [r.ratio for r in mine], marker=marker, alpha=0.8,
                       c="tab:gray" if peer else colour,
                       label=f"{inp}{' (peers)' if peer else ''}")  # fmt: skip
            if inp == labelled:
                for r, x in zip(mine, xs, strict=True):
                    ax.annotate(r.codec, (x, r.ratio), fontsize=7, xytext=(4, -3),
                                textcoords="offset points")  # fmt: skip
    ax.axvline(floor, color="k", lw=0.5, ls=":")
    ax.set(xscale="log", yscale="log", xlabel=f"relative L2 error (bit-exact drawn at {floor:g})",
           ylabel="compression ratio vs raw fp32 (envelopes included for fedmq)",
           title="fedmq codecs vs peers' formats: size against error (labels: "
           f"{labelled})")  # fmt: skip
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats; median (>= 5)")
    parser.add_argument("--clients", type=int, default=3, help="digits clients per model")
    parser.add_argument("--synthetic", type=int, default=1_000_000, help="synthetic delta size")
    parser.add_argument("--max-payload", type=int, default=128 * 1024)
    parser.add_argument("--codecs", default=",".join(CODECS), help="comma-separated specs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--plot", type=Path, help="also plot ratio vs rel. L2 error (PNG)")
    args = parser.parse_args()
    started = time.perf_counter()
    print("making deltas (digits mlp + cnn, one round of local training)...", file=sys.stderr)
    inputs = [*digits_inputs(args.clients, args.seed), synthetic_input(args.synthetic, args.seed)]
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    jobs = []
    for inp in inputs:
        print(f"{inp.name}: {len(inp.deltas)} x {inp.deltas[0].size:,} params", file=sys.stderr)
        for text in codecs:
            jobs.append(prepare(inp, fedmq_codec(text, args.max_payload, args.seed), False))
        jobs.extend(prepare(inp, peer, True) for peer in PEERS)
    print(f"timing {len(jobs)} codec x input pairs, {args.repeats} rounds...", file=sys.stderr)
    time_round_robin(jobs, args.repeats)
    rows = [result(job) for job in jobs]
    print(table(rows))
    print()
    for text in checks(rows):
        print(text)
    print(f"\n({time.perf_counter() - started:.0f} s; fedmq sizes include envelope headers, "
          f"max_payload {args.max_payload:,} B; medians of {args.repeats} repeats)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
