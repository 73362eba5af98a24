"""The progress line: which edges left a round, and what a step is called in each mode."""

import io

import pytest

from fedmq.cli.launcher import RoundProgress
from fedmq.cli.output import Progress, departed_note
from fedmq.cloud_node.runtime import RoundRecord

pytestmark = pytest.mark.unit


def _record(**kw: object) -> RoundRecord:
    base: dict[str, object] = dict(
        round=3, version=3, accuracy=0.9, loss=0.3, selected=("edge-0", "edge-1", "edge-2"),
        participants=("edge-0", "edge-1"), num_samples=100, seconds=1.0, round_seconds=0.9,
        quorum_met=True, counters={}, cloud_sent=0, cloud_received=0,
    )  # fmt: skip
    base.update(kw)
    return RoundRecord(**base)  # type: ignore[arg-type]


def _line(record: RoundRecord, mode: str = "sync") -> str:
    out = io.StringIO()
    Progress(10, out, mode=mode)(RoundProgress(record, 1, 2, 3, 4, 5.0, 6.0))
    return out.getvalue()


def test_the_progress_line_names_the_edges_that_left() -> None:
    line = _line(_record(departed=("edge-2",)))
    assert "2/3 edges" in line and "(left: edge-2)" in line
    assert "left" not in _line(_record())


def test_a_long_departure_list_is_cut_short() -> None:
    note = departed_note([f"edge-{i}" for i in range(8)])
    assert note == "  (left: edge-0, edge-1, edge-2, edge-3, edge-4 +3 more)"


def test_async_lines_count_server_steps_not_rounds() -> None:
    assert _line(_record(), "async").startswith("server step  3/10")
    assert _line(_record(), "sync").startswith("round  3/10")
