"""Control messages whose size does not grow with the fleet (issue 11, item 2).

A task used to list every selected edge id and went to every edge: per-edge downlink grew with
the fleet, total downlink with its square. It now selects by salt and threshold (8 bytes each).
"""

import dataclasses

import numpy as np
import pytest

from fedmq.cloud_node import CloudConfig, FedAvg
from fedmq.cloud_node.strategy import Selection, named
from fedmq.codec import Control, RoundSummary, Status, encode
from fedmq.codec.messages import SELECT_ALL, selection_hash, threshold_for
from fedmq.errors import ConfigError

LAYOUT = (("fc.weight", (10, 64)), ("fc.bias", (10,)))


def names(n: int) -> list[str]:
    # Same-length ids at every fleet size, so only the fleet (not the names) can differ.
    return [f"edge-{i:05d}" for i in range(n)]


def sizes(fleet: int) -> dict[str, int]:
    cfg = CloudConfig(broker="mqtt://127.0.0.1:1", clients=fleet)
    ready = names(fleet)
    picked = FedAvg(fraction=0.5).select(7, ready, np.random.default_rng(0))
    sync = cfg.task(round=7, version=6, selected=named(picked, ready))
    chain = cfg.task(round=7, version=0, selected=tuple(ready), mode="chain")
    return {
        "status": len(encode(Status(job="digits", sender=ready[0], role="edge", online=True,
                                    num_samples=150))),
        "job": len(encode(cfg.job_spec(LAYOUT))),
        "task sync": len(encode(sync)),
        "task async": len(encode(cfg.task(round=7, version=6, selected=tuple(ready),
                                          mode="async"))),
        "task chain": len(encode(chain)),
        "chain route": len(encode(dataclasses.replace(chain, next=ready[1]))),
        "summary": len(encode(RoundSummary(job="digits", round=7, version=7, accuracy=0.9,
                                           loss=0.3, participants=len(picked),
                                           num_samples=150 * len(picked), duration_s=0.05))),
        "control": len(encode(Control(job="digits", command="stop", reason="rounds done"))),
    }  # fmt: skip


def test_every_control_message_has_the_same_size_at_10_and_10000_edges() -> None:
    small, large = sizes(10), sizes(10_000)
    counts = {"job", "summary"}  # hold numbers that are the fleet's size (see below)
    assert {k: v for k, v in small.items() if k not in counts} == {
        k: v for k, v in large.items() if k not in counts
    }
    # job.clients (10 -> 10,000) and the summary's participants (5 -> 5,000) and num_samples
    # are msgpack uints: 1 byte up to 127, 3 bytes up to 65,535, never more than 9. That is the
    # whole difference: 2 bytes per count, not a byte per edge.
    assert large["job"] - small["job"] == 2
    assert large["summary"] - small["summary"] == 2 + 2


def test_selection_hash_test_vector() -> None:
    """The vector of docs/protocol.md §11.1 (for implementers of compatible nodes)."""
    salt = bytes(range(8))
    assert selection_hash(salt, "edge-3").hex() == "3f302283f90a32a8"
    threshold = bytes.fromhex("8000000000000000")
    assert selection_hash(salt, "edge-3") <= threshold  # 0x3f30... <= 0x8000...: selected


@pytest.mark.parametrize("fleet", [10, 100, 1000])
def test_fedavg_selection_names_exactly_its_clients(fleet: int) -> None:
    ready = names(fleet)
    for fraction in (0.1, 0.5, 1.0):
        rng = np.random.default_rng(3)
        picked = FedAvg(fraction=fraction).select(1, ready, rng)
        assert isinstance(picked, Selection)
        assert list(picked) == sorted(picked)
        assert len(picked) == max(1, int(np.ceil(fraction * fleet)))
        again = FedAvg(fraction=fraction).select(1, ready, np.random.default_rng(3))
        assert again == picked and again.salt == picked.salt  # seeded: runs reproduce
        task = CloudConfig(broker="mqtt://127.0.0.1:1").task(round=1, version=0, selected=picked)
        assert [n for n in ready if task.selects(n)] == list(picked)


def test_a_plain_subset_cannot_be_named_but_everyone_can() -> None:
    ready = names(50)
    everyone = named(tuple(ready), ready)
    assert everyone.threshold == max(selection_hash(bytes(8), n) for n in ready)
    assert threshold_for(bytes(8), ready, ()) == everyone.threshold
    with pytest.raises(ConfigError, match="selection hash"):
        named(tuple(ready[:25]), ready)
    assert SELECT_ALL == b"\xff" * 8
