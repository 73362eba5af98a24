"""Wire messages: round trips, self-validation, and decode of hostile payloads."""

import contextlib
import math
import re
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.codec import (
    DEFAULT_LIMITS,
    MIN_PAYLOAD,
    Control,
    JobSpec,
    Limits,
    Message,
    RoundSummary,
    RoundTask,
    Status,
    TensorChunk,
    decode,
    encode,
)
from fedmq.codec.chunking import digest
from fedmq.codec.messages import KINDS
from fedmq.codec.wire import FIELD_OF, WIRE_KEYS
from fedmq.errors import CodecError, ConfigError, LimitExceeded, SchemaVersionError

pytestmark = pytest.mark.unit

U63 = 2**63 - 1
_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
_topic_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00/+#")
topics = st.text(_topic_chars, min_size=1, max_size=32)  # <= 128 bytes of UTF-8
names = st.text(_chars, min_size=1, max_size=32)
free_text = st.text(_chars, max_size=32)
ints = st.integers(0, U63)
finite = st.floats(allow_nan=False, allow_infinity=False)
codecs = st.sampled_from(["fp32", "fp32+zstd", "fp16+zstd", "bf16", "int8+zstd"])

statuses = st.builds(
    Status,
    job=topics,
    sender=topics,
    role=st.sampled_from(["edge", "cloud"]),
    online=st.booleans(),
    num_samples=ints,
    profile=free_text,
)
layouts = st.lists(
    st.tuples(names, st.lists(st.integers(0, 40), max_size=4).map(tuple)),
    max_size=8,
    unique_by=lambda entry: entry[0],
).map(tuple)
jobs = st.builds(
    JobSpec,
    job=topics,
    model=names,
    dataset=names,
    partition=names,
    clients=st.integers(1, U63),
    seed=ints,
    codec=codecs,
    max_payload=st.integers(MIN_PAYLOAD, DEFAULT_LIMITS.max_payload),
    layout=layouts,
)
client_lists = st.lists(topics, unique=True, max_size=12).map(tuple)
tasks = st.builds(
    RoundTask,
    job=topics,
    round=ints,
    version=ints,
    salt=st.binary(min_size=8, max_size=8),
    threshold=st.binary(min_size=8, max_size=8),
    deadline_s=st.floats(min_value=1e-6, max_value=1e12),
    local_epochs=ints,
    batch_size=st.integers(1, U63),
    lr=st.floats(min_value=0.0, max_value=1e3),
    momentum=st.floats(min_value=0.0, max_value=0.999),
    codec=codecs,
)
summaries = st.builds(
    RoundSummary,
    job=topics,
    round=ints,
    version=ints,
    accuracy=finite,
    loss=finite,
    participants=ints,
    num_samples=ints,
    duration_s=st.floats(min_value=0.0, max_value=1e12),
)
controls = st.builds(Control, job=topics, command=st.just("stop"), reason=free_text)


@st.composite
def chunks(draw: st.DrawFn) -> TensorChunk:
    count = draw(st.integers(1, 5))
    index = draw(st.integers(0, count - 1))
    offset = 64 * index * draw(st.integers(1, 3))
    last = index == count - 1
    length = draw(st.integers(0, 300)) if last else 64 * draw(st.integers(1, 4))
    total = offset + length if last else offset + length + draw(st.integers(0, 1000))
    data = draw(st.binary(max_size=64))
    role = draw(st.sampled_from(["model", "update"]))
    return TensorChunk(
        job=draw(topics),
        sender=draw(topics),
        role=role,
        round=draw(ints),
        version=draw(ints),
        index=index,
        count=count,
        total=total,
        offset=offset,
        length=length,
        encoding=draw(codecs),
        scale=draw(st.floats(min_value=1e-30, max_value=1e30)),
        num_samples=0 if role == "model" else draw(ints),
        metrics=draw(st.dictionaries(names, finite, max_size=16)),
        digest=digest(data),
        data=data,
    )


messages = st.one_of(statuses, jobs, tasks, chunks(), summaries, controls)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_every_message_round_trips(msg: Message) -> None:
    payload = encode(msg)
    back = decode(payload)
    assert back == msg
    assert type(back) is type(msg)
    assert decode(payload, DEFAULT_LIMITS, type(msg)) == msg
    assert encode(back) == payload  # deterministic


def _raw(msg: Message) -> dict[str, Any]:
    body = msgpack.unpackb(encode(msg), raw=False)
    assert isinstance(body, dict)
    return body


def _wire(msg: Message) -> dict[str, Any]:
    """The payload's map with field names for keys (tests read better by name)."""
    names = FIELD_OF[type(msg)]
    return {names.get(k, k): v for k, v in _raw(msg).items()}


def _pack(body: object) -> bytes:
    """Pack a map keyed by field names, translating the known ones to their wire keys."""
    kind = body.get("k") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(kind, str) and kind in KINDS:
        keys = WIRE_KEYS[KINDS[kind]]
        body = {keys.get(k, k): v for k, v in body.items()}
    return bytes(msgpack.packb(body, use_bin_type=True))


STATUS = Status(job="mnist", sender="edge-1", role="edge", online=True, num_samples=60)
TASK = RoundTask(
    job="mnist",
    round=3,
    version=2,
    salt=bytes(range(8)),
    threshold=b"\x80" + bytes(7),
    deadline_s=30,
    local_epochs=1,
    batch_size=32,
    lr=0.01,
    momentum=0.9,
    codec="fp16+zstd",
)
JOB = JobSpec(
    job="mnist",
    model="mlp",
    dataset="mnist",
    partition="iid",
    clients=2,
    seed=0,
    codec="fp32",
    max_payload=65536,
    layout=(("fc.weight", (10, 784)), ("fc.bias", (10,))),
)


def test_envelope_is_the_documented_map() -> None:
    body = _raw(Control(job="mnist", command="stop", reason="done"))
    assert body == {"v": 3, "k": "control", "j": "mnist", "C": "stop", "R": "done"}
    assert list(_wire(STATUS))[:2] == ["v", "k"]
    assert _wire(JOB)["layout"] == [["fc.weight", [10, 784]], ["fc.bias", [10]]]
    assert JOB.num_params == 7850


def test_floats_are_normalised_and_lists_become_tuples() -> None:
    assert isinstance(TASK.deadline_s, float) and TASK.deadline_s == 30.0
    task = RoundTask(**_kw(TASK, salt=bytearray(range(8))))
    assert task.salt == bytes(range(8)) and isinstance(task.salt, bytes)
    assert hash(task) == hash(TASK)


def _kw(msg: Message, **changes: object) -> dict[str, Any]:
    body = _wire(msg)
    del body["v"], body["k"]
    body.update(changes)
    return body


# ---- construction-time validation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "error", "needle"),
    [
        ({"job": ""}, CodecError, "Status.job must not be empty"),
        ({"job": "a/b"}, CodecError, "Status.job"),
        ({"sender": "edge+1"}, CodecError, "Status.sender"),
        ({"sender": "#"}, CodecError, "Status.sender"),
        ({"sender": "a\x00b"}, CodecError, "Status.sender"),
        ({"job": "x" * 129}, LimitExceeded, "129 bytes"),
        ({"job": "é" * 65}, LimitExceeded, "130 bytes"),  # the limit is on UTF-8 bytes
        ({"job": "\ud800"}, CodecError, "UTF-8"),
        ({"role": "fog"}, CodecError, "Status.role"),
        ({"online": 1}, CodecError, "Status.online must be a bool"),
        ({"num_samples": -1}, CodecError, "Status.num_samples"),
        ({"num_samples": True}, CodecError, "Status.num_samples must be an int"),
        ({"num_samples": 1.0}, CodecError, "Status.num_samples must be an int"),
        ({"num_samples": 2**63}, CodecError, "Status.num_samples"),
        ({"profile": None}, CodecError, "Status.profile must be a string"),
    ],
)
def test_status_validates_itself(changes: dict[str, object], error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        Status(**_kw(STATUS, **changes))


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"deadline_s": 0.0}, "deadline_s must be > 0"),
        ({"deadline_s": math.nan}, "deadline_s must be finite"),
        ({"deadline_s": math.inf}, "deadline_s must be finite"),
        ({"deadline_s": 10**400}, "out of float range"),
        ({"lr": -0.1}, "lr must be >= 0"),
        ({"lr": "0.1"}, "lr must be a float"),
        ({"batch_size": 0}, "batch_size"),
        ({"salt": bytes(7)}, "salt must be exactly 8 bytes"),
        ({"threshold": bytes(9)}, "threshold must be exactly 8 bytes"),
        ({"salt": "01234567"}, "salt must be bytes"),
        ({"next": "a/b"}, "RoundTask.next"),
        ({"codec": "fp64"}, "RoundTask.codec: unknown codec stage"),
        ({"round": -1}, "RoundTask.round"),
    ],
)
def test_round_task_validates_itself(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        RoundTask(**_kw(TASK, **changes))


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"layout": (("w", (2,)), ("w", (3,)))}, "twice"),
        ({"layout": (("w", (2, -1)),)}, r"shape\[1\]"),
        ({"layout": (("w", 2),)}, "shape must be an array"),
        ({"layout": (("w",),)}, r"\[name, \[dims"),
        ({"layout": (("", (2,)),)}, "empty"),
        ({"layout": {"w": (2,)}}, "must be an array"),
        ({"clients": 0}, "clients"),
        (
            {"max_payload": MIN_PAYLOAD - 1},
            f"max_payload {MIN_PAYLOAD - 1} < minimum {MIN_PAYLOAD}",
        ),
        ({"model": ""}, "JobSpec.model"),
        ({"codec": "zstd"}, "no value stage"),
    ],
)
def test_job_spec_validates_itself(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        JobSpec(**_kw(JOB, **changes))


def test_summary_and_control_validate_themselves() -> None:
    with pytest.raises(CodecError, match="loss must be finite"):
        RoundSummary("j", 1, 1, 0.5, math.inf, 0, 0, 1.0)
    with pytest.raises(CodecError, match="duration_s"):
        RoundSummary("j", 1, 1, 0.5, 0.1, 0, 0, -1.0)
    with pytest.raises(CodecError, match="participants"):
        RoundSummary("j", 1, 1, 0.5, 0.1, ("a",), 0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match=re.escape("Control.command")):
        Control("j", "restart")


# ---- decoding hostile payloads -------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 4])
def test_other_schema_versions_are_schema_version_errors(version: int) -> None:
    body = _wire(STATUS)
    with pytest.raises(SchemaVersionError):
        decode(_pack({**body, "v": version}))
    with pytest.raises(SchemaVersionError):
        decode(_pack({"v": version, "k": "something-new"}))


@pytest.mark.parametrize("version", [None, "1", 1.0, True, [1]])
def test_missing_or_non_int_version_is_a_codec_error(version: object) -> None:
    body = _wire(STATUS)
    if version is None:
        del body["v"]
    else:
        body["v"] = version
    with pytest.raises(CodecError) as info:
        decode(_pack(body))
    assert not isinstance(info.value, SchemaVersionError)


def test_envelope_errors() -> None:
    body = _wire(STATUS)
    with pytest.raises(CodecError, match="unknown message kind"):
        decode(_pack({**body, "k": "hello"}))
    with pytest.raises(CodecError, match="unknown message kind"):
        decode(_pack({**body, "k": 3}))
    with pytest.raises(CodecError, match="not a map"):
        decode(_pack([1, "status"]))
    with pytest.raises(CodecError, match="expected RoundTask, got Status"):
        decode(encode(STATUS), expect=RoundTask)
    with pytest.raises(CodecError, match="misses fields"):
        decode(_pack({k: v for k, v in body.items() if k != "online"}))
    with pytest.raises(CodecError, match="unknown fields"):
        decode(_pack({**body, "extra": 1}))
    with pytest.raises(CodecError, match="unknown fields"):
        bin_key: dict[object, object] = {b"sender": "x"}
        bin_key.update(body)  # the str key "sender" too: b"sender" is an extra, unknown key
        decode(_pack(bin_key))
    with pytest.raises(CodecError, match="must be bytes"):
        decode("text")  # type: ignore[call-overload]
    assert decode(bytearray(encode(STATUS)), expect=Status) == STATUS
    assert decode(memoryview(encode(STATUS))) == STATUS


def test_payload_size_and_msgpack_limits() -> None:
    payload = encode(TASK)
    with pytest.raises(LimitExceeded, match="max_payload"):
        decode(payload, Limits(max_payload=len(payload) - 1))
    assert decode(payload, Limits(max_payload=len(payload))) == TASK
    with pytest.raises(LimitExceeded):
        decode(b"\x81\xa1v\xdd\xff\xff\xff\xff")  # an array declaring 2**32-1 items
    with pytest.raises(LimitExceeded):
        decode(encode(Status(**_kw(STATUS, profile="p" * 40))), Limits(max_name_len=32))
    with pytest.raises(CodecError):
        decode(_pack({**_wire(STATUS), "x": msgpack.ExtType(1, b"abc")}))


def test_configured_limits_are_applied() -> None:
    with pytest.raises(LimitExceeded, match="max_layout"):
        decode(encode(JOB), Limits(max_layout=1))
    with pytest.raises(LimitExceeded, match="max_dims"):
        decode(encode(JOB), Limits(max_dims=1))
    with pytest.raises(LimitExceeded, match="max_params"):
        decode(encode(JOB), Limits(max_params=7849))
    with pytest.raises(LimitExceeded, match=re.escape("JobSpec.max_payload")):
        decode(encode(JOB), Limits(max_payload=65535))
    huge = JobSpec(**_kw(JOB, layout=(("w", (10**6, 10**6)),)))
    with pytest.raises(LimitExceeded, match="max_params"):
        decode(encode(huge))


def test_limits_themselves_are_validated() -> None:
    with pytest.raises(ConfigError):
        Limits(max_payload=0)
    with pytest.raises(ConfigError):
        Limits(max_name_len=8)


JUNK: list[object] = [
    None,
    True,
    -1,
    2**64 - 1,
    1.5,
    math.nan,
    "",
    "x/y",
    b"\x00",
    [],
    [1, "a"],
    {},
    {"a": []},
]


@pytest.mark.parametrize("msg", [STATUS, TASK, JOB], ids=lambda m: type(m).__name__)
def test_every_field_with_junk_raises_only_codec_errors(msg: Message) -> None:
    body = _wire(msg)
    rejected = 0
    for field in [k for k in body if k not in ("v", "k")]:
        for junk in JUNK:
            try:
                back = decode(_pack({**body, field: junk}))
            except CodecError:
                rejected += 1
            else:
                assert decode(encode(back)) == back
    assert rejected >= (len(body) - 2) * (len(JUNK) - 3)


wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([STATUS, TASK, JOB]), st.data())
def test_fuzzed_fields_raise_only_codec_errors(msg: Message, data: st.DataObject) -> None:
    body = _wire(msg)
    field = data.draw(st.sampled_from(sorted(body)))
    body[field] = data.draw(wire_values)
    with contextlib.suppress(CodecError):
        decode(_pack(body))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_codec_errors(payload: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode(payload)


@pytest.mark.parametrize("msg", [STATUS, TASK, JOB], ids=lambda m: type(m).__name__)
def test_every_truncation_is_rejected(msg: Message) -> None:
    payload = encode(msg)
    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            decode(payload[:cut])
    with pytest.raises(CodecError):
        decode(payload + b"\x00")


def test_every_bit_flip_is_rejected_or_still_valid() -> None:
    payload = bytearray(encode(TASK))
    for bit in range(len(payload) * 8):
        flipped = bytearray(payload)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            back = decode(bytes(flipped))
        except CodecError:
            continue
        assert isinstance(back, RoundTask)
