"""Round tracing: timestamped events on the `fedmq.trace` logger, off unless it logs DEBUG.

`bench/latency.py` turns it on and builds a round's time budget from the events (training,
encode, publish, broker, decode, aggregate, evaluate). Disabled, a mark costs one level check.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("fedmq.trace")


def mark(node: str, event: str, round: int) -> None:
    """Record that `node` reached `event` in `round`, stamped with `time.perf_counter()`."""
    if log.isEnabledFor(logging.DEBUG):
        now = time.perf_counter()
        log.debug(
            "%s %s %d %.6f", node, event, round, now, extra={"trace": (now, node, event, round)}
        )
