"""Traffic and time estimates made before a run, from the protocol alone (pure, no I/O).

It knows the codec's encoded sizes (it encodes the initial model and one sample update), the
chunking, MQTT 3.1.1 framing and acks, and every control message of the round protocol; it never
looks at a run's measurements. Bytes are what crosses each edge's socket, summed over edges.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedmq.codec import (
    CodecSpec,
    Control,
    JobSpec,
    RoundTask,
    Status,
    TensorChunk,
    decode,
    encode,
    split_vector,
)
from fedmq.codec.messages import SALT_SIZE, SELECT_ALL
from fedmq.tinyml_profiles import mqtt_sizes as mq
from fedmq.tinyml_profiles.profiles import Profile
from fedmq.transport import Topics

# A task's salt and threshold are 8 bytes each whatever their values (and whoever is selected),
# so any pair sizes the task exactly.
_SALT = bytes(SALT_SIZE)

Selector = Callable[[int, Sequence[str]], tuple[str, ...]]


@dataclass(frozen=True)
class EdgePlan:
    node_id: str
    num_samples: int
    codec: str  # the uplink codec this edge uses
    profile: Profile | None = None
    start: int = 0  # first element it sends (a head-only edge sends only the model's head)


@dataclass(frozen=True, kw_only=True)
class Plan:
    job: JobSpec
    edges: tuple[EdgePlan, ...]
    rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    deadline_s: float
    task_codec: str
    downlink_codec: str  # the full model, which edges fetch once
    delta_codec: str  # each round's change of the model
    flops_per_sample: float  # training cost of the model, forward + backward
    host_flops: float = 0.0  # this machine's training speed; emulation cannot beat it
    keepalive: int = 20
    resync_s: float = 10.0
    mode: str = "sync"  # sync | async (the same messages, `select` differs) | chain
    prox_mu: float = 0.0  # travels in every task


@dataclass(frozen=True)
class RoundEstimate:
    round: int
    selected: tuple[str, ...]
    bytes_up: int
    bytes_down: int
    naive_bytes: int  # W x C: raw fp32 update size times clients this round
    bound_seconds: float  # slowest selected edge: download + compute + upload + RTT
    slowest: str


@dataclass(frozen=True)
class Estimate:
    rounds: tuple[RoundEstimate, ...]
    setup_up: int  # connect, subscribe, presence, job
    setup_down: int
    teardown_up: int
    teardown_down: int
    update_bytes: dict[str, int] = field(default_factory=dict)  # per edge, one update
    model_bytes: int = 0  # one global model, payloads only
    host_flops: float = 0.0  # the host speed the time bounds assumed (Plan.host_flops)

    @property
    def bytes_up(self) -> int:
        return self.setup_up + sum(r.bytes_up for r in self.rounds) + self.teardown_up

    @property
    def bytes_down(self) -> int:
        return self.setup_down + sum(r.bytes_down for r in self.rounds) + self.teardown_down

    @property
    def naive_bytes(self) -> int:
        return sum(r.naive_bytes for r in self.rounds)

    @property
    def seconds(self) -> float:
        return sum(r.bound_seconds for r in self.rounds)

    def first_round(self) -> RoundEstimate:
        """Round 1: every edge downloads the whole model (later rounds bring only its change)."""
        return self.rounds[0]

    def steady_round(self) -> tuple[float, float, float]:
        """(bytes up, bytes down, bound seconds) of a later round: the mean over rounds 2..R
        (round 1 alone when there is no other)."""
        later = self.rounds[1:] or self.rounds[:1]
        n = len(later)
        return (
            sum(r.bytes_up for r in later) / n,
            sum(r.bytes_down for r in later) / n,
            sum(r.bound_seconds for r in later) / n,
        )

    def state(self) -> dict[str, Any]:
        """Everything, as JSON types: `from_state(state())` is an equal Estimate."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Estimate:
        rounds = tuple(
            RoundEstimate(**{**r, "selected": tuple(r["selected"])}) for r in state["rounds"]
        )
        return cls(
            rounds, int(state["setup_up"]), int(state["setup_down"]),
            int(state["teardown_up"]), int(state["teardown_down"]),
            {str(k): int(v) for k, v in state["update_bytes"].items()},
            int(state["model_bytes"]), float(state.get("host_flops", 0.0)),
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        first = self.first_round()
        up, down, seconds = self.steady_round()
        return {
            "first_round": {
                "bytes_up": first.bytes_up,
                "bytes_down": first.bytes_down,
                "bound_seconds": first.bound_seconds,
            },
            "steady_round": {"bytes_up": up, "bytes_down": down, "bound_seconds": seconds},
            "estimated_bytes_up": self.bytes_up,
            "estimated_bytes_down": self.bytes_down,
            "naive_bytes": self.naive_bytes,
            "estimated_seconds": self.seconds,
            "round_bound_seconds": [r.bound_seconds for r in self.rounds],
            "estimated_round_bytes_up": [r.bytes_up for r in self.rounds],
            "estimated_round_bytes_down": [r.bytes_down for r in self.rounds],
            "naive_round_bytes": [r.naive_bytes for r in self.rounds],
            "setup_bytes_up": self.setup_up,
            "setup_bytes_down": self.setup_down,
            "teardown_bytes_up": self.teardown_up,
            "teardown_bytes_down": self.teardown_down,
            "update_bytes": self.update_bytes,
            "model_bytes": self.model_bytes,
            "host_flops": self.host_flops,
        }


def _chunk_sizes(template: list[TensorChunk], topic: str, **header: Any) -> tuple[int, int]:
    """(payload bytes, MQTT PUBLISH bytes) of a chunked vector with this header."""
    payload = publish = 0
    for chunk in template:
        n = len(encode(dataclasses.replace(chunk, **header)))
        payload += n
        publish += mq.publish_size(topic, n)
    return payload, publish


def _template(
    vector: np.ndarray,
    codec: str,
    job: JobSpec,
    sender: str,
    role: str,
    num_samples: int,
    metrics: dict[str, float],
    start: int = 0,
) -> list[TensorChunk]:
    payloads = split_vector(
        vector,
        CodecSpec.parse(codec),
        max_payload=job.max_payload,
        job=job.job,
        sender=sender,
        role=role,
        round=1,
        version=0,
        num_samples=num_samples,
        metrics=metrics,
        start=start,
    )
    return [decode(p, expect=TensorChunk) for p in payloads]


def _transfer(nbytes: int, bps: float) -> float:
    return nbytes * 8.0 / bps


def estimate(
    plan: Plan,
    *,
    full_model: np.ndarray,
    changes: Sequence[np.ndarray],
    deltas: Sequence[Mapping[str, np.ndarray]],
    select: Selector,
    hops: Sequence[Sequence[np.ndarray]] = (),
) -> Estimate:
    """Per-round bytes (both directions, all edges) and the link-limited round time bound.

    Samples teach it the codecs' compressed sizes: `full_model` is what edges download in
    round 1, `changes[k]` the model change sent in round k+2, `deltas[k]` what each edge
    encodes in round k+1 (e.g. from running the first rounds of the workload in-process);
    rounds past the samples reuse the last. Everything else is the protocol's arithmetic.
    `select` replays the cloud's seeded client sampling (in async mode: whose updates make
    each server step). In a chain, `hops[k][i]` is the model handed to position i of pass k+1
    (the last one goes back to the cloud).

    Async mode (FedBuff) differs from sync in three ways that show on the wire: every task
    names all online edges (each trains whenever it is free), the cloud publishes one more task
    than it takes steps (the first, before any step), and when the last step is taken every
    edge is still training from some version: each sends one more update that no step uses.
    """
    chain = plan.mode == "chain"
    if not (deltas or chain):
        raise ValueError("need at least one round of sample updates")
    if chain and not hops:
        hops = [[full_model] * (len(plan.edges) + 1)]  # the initial model stands in
    job, topics = plan.job, Topics(plan.job.job)
    metrics = {"loss": 0.0, "accuracy": 0.0, "seconds": 0.0}
    # Round 1 brings the whole initial model (edges subscribe to it once, then leave); every
    # later round brings the change of the model, in the delta codec.
    model_tmpl = _template(full_model, plan.downlink_codec, job, "cloud", "model", 0, {})
    change_tmpls = [
        _template(c, plan.delta_codec, job, "cloud", "delta", 0, {}) for c in changes
    ] or [model_tmpl]
    edge_tmpls = [
        {
            e.node_id: _template(
                d[e.node_id], e.codec, job, e.node_id, "update", e.num_samples, metrics, e.start
            )
            for e in plan.edges
        }
        for d in ([] if chain else deltas)
    ]
    by_id = {e.node_id: e for e in plan.edges}

    def status(e: EdgePlan, online: bool, samples: int) -> int:
        return len(
            encode(
                Status(
                    job=job.job,
                    sender=e.node_id,
                    role="edge",
                    online=online,
                    num_samples=samples,
                    profile=e.profile.name if e.profile else "",
                )
            )
        )

    # Setup: CONNECT (with will), four SUBSCRIBEs, birth, the job, and the status after joining.
    subs = (topics.jobspec, topics.task, topics.delta_all, topics.control)
    job_pub = mq.publish_size(topics.jobspec, len(encode(job)))
    clear_task = mq.publish_size(topics.task, 0)
    setup_up = setup_down = 0
    for e in plan.edges:
        st = topics.status(e.node_id)
        setup_up += mq.connect_size(
            f"{job.job}-{e.node_id}", will_topic=st, will_payload_len=status(e, False, 0)
        )
        setup_up += sum(mq.subscribe_size(t) for t in subs)
        setup_up += mq.subscribe_size(topics.chain(e.node_id))
        setup_up += mq.publish_size(st, status(e, True, 0))  # birth
        setup_up += mq.publish_size(st, status(e, True, e.num_samples))  # after joining
        setup_up += 2 * mq.PUBACK  # for the task clear and the job
        setup_down += mq.CONNACK + (len(subs) + 1) * mq.SUBACK_ONE + 2 * mq.PUBACK
        # The full model topic: subscribed from the first task until the model is complete. A
        # chain's models come on chain/<edge>: its edges never subscribe to it.
        if not chain:
            setup_up += mq.subscribe_size(topics.model_all) + mq.unsubscribe_size(topics.model_all)
            setup_down += mq.SUBACK_ONE + mq.UNSUBACK
        setup_down += clear_task + job_pub

    rounds: list[RoundEstimate] = []
    online = sorted(by_id)
    w_fp32 = 4 * job.num_params
    if chain:
        rounds = _chain_rounds(plan, hops, online)
    for rnd in range(1, 0 if chain else plan.rounds + 1):
        version = rnd - 1
        selected = tuple(select(rnd, online))  # a Selection's ids (its salt sizes nothing)
        task = RoundTask(
            job=job.job,
            round=rnd,
            version=version,
            salt=_SALT,
            threshold=SELECT_ALL,
            deadline_s=plan.deadline_s,
            local_epochs=plan.local_epochs,
            batch_size=plan.batch_size,
            lr=plan.lr,
            momentum=plan.momentum,
            codec=plan.task_codec,
            mode="async" if plan.mode == "async" else "sync",
            prox_mu=plan.prox_mu,
        )
        task_pub = mq.publish_size(topics.task, len(encode(task)))
        model_pub = 0
        if rnd == 1:
            round_model, topic_of = model_tmpl, topics.model
        else:
            round_model, topic_of = change_tmpls[min(rnd - 1, len(change_tmpls)) - 1], topics.delta
        round_edges = edge_tmpls[min(rnd, len(edge_tmpls)) - 1]
        for i, chunk in enumerate(round_model):
            n = len(encode(dataclasses.replace(chunk, round=rnd, version=version)))
            model_pub += mq.publish_size(topic_of(i), n)
        up = down = 0
        bound, slowest = 0.0, ""
        for e in plan.edges:
            down += model_pub + task_pub
            up += (len(round_model) + 1) * mq.PUBACK
            if e.node_id not in selected:
                continue
            tmpl = round_edges[e.node_id]
            _, pub = _chunk_sizes(tmpl, topics.update(e.node_id), round=rnd, version=version)
            up += pub
            down += len(tmpl) * mq.PUBACK
            seconds = _edge_seconds(plan, e, model_pub + task_pub, pub)
            if seconds > bound:
                bound, slowest = seconds, e.node_id
        rounds.append(
            RoundEstimate(rnd, selected, up, down, w_fp32 * len(selected), bound, slowest)
        )

    # Teardown: the final model change (the last round's result; in a chain the full model, on
    # the model topic they still listen to), the stop, the cleared task, the goodbye status and
    # DISCONNECT.
    if chain:  # the model that came back from the last pass, re-published by the cloud
        last = hops[min(plan.rounds, len(hops)) - 1][-1]
        final = _template(last, plan.downlink_codec, job, "cloud", "model", 0, {})
    else:
        final = change_tmpls[min(plan.rounds, len(change_tmpls)) - 1]
    final_topic = topics.model if chain else topics.delta
    final_pub = sum(
        mq.publish_size(
            final_topic(i),
            len(encode(dataclasses.replace(c, round=plan.rounds + 1, version=plan.rounds))),
        )
        for i, c in enumerate(final)
    )
    stop = Control(job=job.job, command="stop", reason="rounds done")
    control = mq.publish_size(topics.control, len(encode(stop)))
    teardown_up = teardown_down = 0
    for e in plan.edges:
        if not chain:  # a chain's final model goes to serving nodes, not to its edges
            teardown_down += final_pub
            teardown_up += len(final) * mq.PUBACK
        # The edge leaves on the stop: the cleared task reaches it while it says goodbye (and
        # is acked), the cleared job comes after it has gone (measured on every run: 22 B).
        teardown_down += control + clear_task + mq.PUBACK
        goodbye = mq.publish_size(topics.status(e.node_id), status(e, False, 0))
        teardown_up += 2 * mq.PUBACK + goodbye + mq.DISCONNECT
    if plan.mode == "async":
        # The task after the last step (the first one was counted in round 1), and every
        # edge's update in flight when the last step was taken.
        in_flight = edge_tmpls[min(plan.rounds, len(edge_tmpls)) - 1]
        after = RoundTask(
            job=job.job, round=plan.rounds + 1, version=plan.rounds, salt=_SALT,
            threshold=SELECT_ALL, deadline_s=plan.deadline_s, local_epochs=plan.local_epochs,
            batch_size=plan.batch_size, lr=plan.lr, momentum=plan.momentum,
            codec=plan.task_codec, mode="async", prox_mu=plan.prox_mu,
        )  # fmt: skip
        tail_task = mq.publish_size(topics.task, len(encode(after)))
        for e in plan.edges:
            rnd, version = plan.rounds + 1, plan.rounds
            tmpl = in_flight[e.node_id]
            _, pub = _chunk_sizes(tmpl, topics.update(e.node_id), round=rnd, version=version)
            teardown_up += pub + mq.PUBACK
            teardown_down += tail_task + len(tmpl) * mq.PUBACK
    if chain:  # what each edge hands on in the first pass: a whole model
        first = dict(zip(online, hops[0][1:], strict=False))
        update_bytes = {
            node: sum(len(encode(c)) for c in _template(v, plan.downlink_codec, job, node,
                                                          "model", 0, {}))
            for node, v in first.items()
        }  # fmt: skip
    else:
        update_bytes = {
            e.node_id: sum(len(encode(c)) for c in edge_tmpls[0][e.node_id]) for e in plan.edges
        }
    model_bytes = sum(len(encode(c)) for c in model_tmpl)
    return Estimate(
        tuple(rounds), setup_up, setup_down, teardown_up, teardown_down, update_bytes,
        model_bytes, plan.host_flops,
    )  # fmt: skip


def _chain_rounds(
    plan: Plan, hops: Sequence[Sequence[np.ndarray]], order: list[str]
) -> list[RoundEstimate]:
    """Chained passes: each edge gets the model on chain/<edge> and sends its own to the next.

    What an edge sends is its trained full model in the downlink codec, sized from `hops` (the
    passes run ahead; later passes reuse the last). The bound is the sum over the hops: they
    are serial.
    """
    job, topics = plan.job, Topics(plan.job.job)
    by_id = {e.node_id: e for e in plan.edges}
    passes = [
        {
            sender: _template(vec, plan.downlink_codec, job, sender, "model", 0, {})
            for sender, vec in zip(("cloud", *order), hop, strict=False)
        }
        for hop in hops
    ]
    out: list[RoundEstimate] = []
    for rnd in range(1, plan.rounds + 1):
        tmpl = passes[min(rnd, len(passes)) - 1]
        task = RoundTask(
            job=job.job, round=rnd, version=0, salt=_SALT, threshold=SELECT_ALL,
            deadline_s=plan.deadline_s, local_epochs=plan.local_epochs,
            batch_size=plan.batch_size, lr=plan.lr, momentum=plan.momentum,
            codec=plan.downlink_codec, mode="chain", prox_mu=plan.prox_mu,
        )  # fmt: skip
        task_pub = mq.publish_size(topics.task, len(encode(task)))
        up = down = 0
        bound = 0.0
        for k, node in enumerate(order):
            sender = order[k - 1] if k else "cloud"
            after = order[k + 1] if k + 1 < len(order) else "cloud"
            hop_in = sum(
                mq.publish_size(
                    topics.chain(node),
                    len(encode(dataclasses.replace(c, round=rnd, version=k))),
                )
                for c in tmpl[sender]
            )
            hop_out = sum(
                mq.publish_size(
                    topics.chain(after),
                    len(encode(dataclasses.replace(c, round=rnd, version=k + 1))),
                )
                for c in tmpl[node]
            )
            # The route (the pass's task naming our successor, on chain/<edge>) and its PUBACK.
            route = dataclasses.replace(task, next=after)
            up += hop_out + len(tmpl[sender]) * mq.PUBACK + mq.PUBACK
            down += hop_in + task_pub + len(tmpl[node]) * mq.PUBACK
            down += mq.publish_size(topics.chain(node), len(encode(route)))
            bound += _edge_seconds(plan, by_id[node], hop_in, hop_out)
        out.append(
            RoundEstimate(rnd, tuple(order), up, down, 4 * job.num_params * len(order), bound,
                          order[-1])
        )  # fmt: skip
    return out


def compute_seconds(plan: Plan, edge: EdgePlan) -> float:
    """Training time of one round on the edge: the profile's speed, never faster than the host."""
    flops = plan.flops_per_sample * edge.num_samples * plan.local_epochs
    speeds = [s for s in (edge.profile.flops if edge.profile else 0.0, plan.host_flops) if s > 0]
    return flops / min(speeds) if speeds else 0.0


def _edge_seconds(plan: Plan, edge: EdgePlan, down_bytes: int, up_bytes: int) -> float:
    link = edge.profile.link if edge.profile else None
    seconds = compute_seconds(plan, edge)
    if link is not None:
        seconds += _transfer(down_bytes, link.down_bps) + _transfer(up_bytes, link.up_bps)
        seconds += 2 * link.one_way_s
    return seconds
