"""Given the same split, initial weights and batch order, fedmq does exactly the work of a plain
PyTorch FedAvg loop: the same held-out accuracy, round by round, to 4 decimals (issue 11)."""

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional

from fedmq.cloud_node import CloudConfig, CloudNode
from fedmq.edge_node import EdgeConfig, EdgeNode
from fedmq.errors import ConfigError
from fedmq.workloads.split import Split, load_init_weights, load_split, save_split

pytestmark = pytest.mark.integration

CLIENTS, ROUNDS, SEED, LR, BATCH = 10, 30, 0, 0.1, 32


def batch_seed(*parts: int) -> int:
    """The shuffling seed of an edge in a round (fedmq's derive_seed(seed, round, shard))."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0]) >> 1


def plain_fedavg(
    x: torch.Tensor, y: torch.Tensor, split: dict[str, list[list[int]] | list[int]],
    init: list[torch.Tensor],
) -> list[float]:  # fmt: skip
    """FedAvg in plain PyTorch: every edge trains one epoch of SGD from what the server sent,
    the server adds the sample-weighted mean of the deltas (in float64) and evaluates."""
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    server = [t.clone() for t in init]  # the aggregate
    held = [t.clone() for t in init]  # what edges hold (the fp32 downlink delta is lossless)
    test = torch.tensor(split["test"])
    accuracies = []
    for rnd in range(1, ROUNDS + 1):
        total = [torch.zeros_like(t, dtype=torch.float64) for t in init]
        weight = 0
        for i, idx in enumerate(split["edges"]):
            xs, ys = x[torch.tensor(idx)], y[torch.tensor(idx)]
            with torch.no_grad():
                for p, h in zip(model.parameters(), held, strict=True):
                    p.copy_(h)
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
            order = torch.randperm(len(ys), generator=torch.Generator().manual_seed(
                batch_seed(SEED, rnd, i)))  # fmt: skip
            for start in range(0, len(ys), BATCH):
                b = order[start : start + BATCH]
                loss = functional.cross_entropy(model(xs[b]), ys[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            for t, p, h in zip(total, model.parameters(), held, strict=True):
                t.add_(len(ys) * (p.detach() - h).double())
            weight += len(ys)
        server = [(s.double() + t / weight).float() for s, t in zip(server, total, strict=True)]
        held = [h + (s - h) for h, s in zip(held, server, strict=True)]  # what the delta moves
        with torch.no_grad():
            for p, s in zip(model.parameters(), server, strict=True):
                p.copy_(s)
            correct = int((model(x[test]).argmax(1) == y[test]).sum())
        accuracies.append(correct / len(test))
    return accuracies


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    return torch.tensor(x), torch.tensor(np.asarray(bunch.target, dtype=np.int64))


async def test_fedmq_reproduces_a_plain_pytorch_fedavg_loop(amqtt_url: str, tmp_path: Path) -> None:
    x, y = digits()
    # Another framework's split (not fedmq's partition) and initial weights.
    perm = np.random.default_rng(7).permutation(len(y))
    test, rest = perm[:360], perm[360:]
    cuts = np.sort(np.random.default_rng(8).choice(np.arange(1, len(rest)), CLIENTS - 1, False))
    split = {"edges": [sorted(e.tolist()) for e in np.split(rest, cuts)],
             "test": sorted(test.tolist())}  # fmt: skip
    (tmp_path / "split.json").write_text(json.dumps(split))
    torch.manual_seed(123)
    init_model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    init = [p.detach().clone() for p in init_model.parameters()]
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    np.savez(tmp_path / "init.npz", **{n: t.numpy() for n, t in zip(names, init, strict=True)})

    expected = plain_fedavg(x, y, split, init)

    cloud = CloudNode(
        CloudConfig(broker=amqtt_url, job="repro", clients=CLIENTS, rounds=ROUNDS,
                    local_epochs=1, batch_size=BATCH, lr=LR, momentum=0.0, seed=SEED,
                    codec="fp32", downlink_codec="fp32", delta_codec="fp32",
                    split=str(tmp_path / "split.json"), init_weights=str(tmp_path / "init.npz"))
    )  # fmt: skip
    edges = [
        EdgeNode(EdgeConfig(broker=amqtt_url, node_id=f"edge-{i}", job="repro", shard=i,
                            split=str(tmp_path / "split.json")))
        for i in range(CLIENTS)
    ]  # fmt: skip
    async with asyncio.timeout(240), asyncio.TaskGroup() as tg:
        result = tg.create_task(cloud.run())
        for edge in edges:
            tg.create_task(edge.run())
    got = [r.accuracy for r in result.result().records]
    assert all(r.participants == tuple(f"edge-{i}" for i in range(CLIENTS))
               for r in result.result().records)  # fmt: skip
    assert [round(a, 4) for a in got] == [round(a, 4) for a in expected]
    assert expected[-1] > 0.8  # it learned: the comparison is not between two flat lines


def test_split_and_init_weights_are_validated(tmp_path: Path) -> None:
    ok = Split(edges=(np.array([0, 1]), np.array([2])), test=np.array([3]))
    ok.check(4, 2)
    bad = {
        "overlap": (Split((np.array([0, 1]), np.array([1])), np.array([3])), "both edge 0 and"),
        "range": (Split((np.array([0, 9]), np.array([2])), np.array([3])), "outside"),
        "empty": (Split((np.array([0]), np.array([], np.int64)), np.array([3])), "no samples"),
        "count": (Split((np.array([0]),), np.array([3])), "split has 1 edges"),
    }
    for split, needle in bad.values():
        with pytest.raises(ConfigError, match=needle):
            split.check(4, 2)
    for name in ("s.json", "s.npz"):  # both formats round-trip
        save_split(tmp_path / name, ok)
        back = load_split(tmp_path / name)
        assert [e.tolist() for e in back.edges] == [[0, 1], [2]] and back.test.tolist() == [3]
    np.savez(tmp_path / "w.npz", a=np.zeros((2, 3), np.float32))
    with pytest.raises(ConfigError, match=r"b has shape|missing \['b'\]"):
        load_init_weights(tmp_path / "w.npz", [("a", (2, 3)), ("b", (2,))])
    with pytest.raises(ConfigError, match=r"a has shape \(2, 3\), the model \(3, 2\)"):
        load_init_weights(tmp_path / "w.npz", [("a", (3, 2))])
    assert load_init_weights(tmp_path / "w.npz", [("a", (2, 3))]).shape == (6,)
