"""How a command ends: an exit code and, for anything a user can act on, one line on stderr.

0 done; 2 a fedmq error (a bad option, a file it cannot read or write, no broker at --broker
within --connect-timeout, a broker that refused us, a port taken); 1 an OS error after the
command started (--log-level debug logs the traceback); 130 interrupted (Ctrl-C); 128 + N a
cloud or edge stopped by signal N (SIGTERM: 143), after its goodbye. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import logging
import signal
import sys

from fedmq.cli import signals
from fedmq.errors import FedmqError

log = logging.getLogger("fedmq")


def exit_code(command: str, exc: BaseException) -> int:
    """The code for `exc`, its line printed; re-raises what is none of the above."""
    stopped = _find(exc, signals.Stopped)
    if isinstance(stopped, signals.Stopped):  # asked to stop, and did so cleanly
        print(f"fedmq {command}: {stopped}", file=sys.stderr)
        return 128 + int(getattr(signal, stopped.signame, signal.SIGTERM))
    for kind, code in ((FedmqError, 2), (KeyboardInterrupt, 130), (OSError, 1)):
        found = _find(exc, kind)
        if found is None:
            continue
        if code == 130:
            print(f"fedmq {command}: interrupted", file=sys.stderr)
        else:
            log.debug("%s failed", command, exc_info=exc)
            text = " ".join(str(found).split()) or type(found).__name__  # one line, always
            print(f"fedmq {command}: error: {text}", file=sys.stderr)
        return code
    raise exc


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` itself, or the first `kind` in it if it is a (nested) group: a TaskGroup of
    nodes that all lost the broker raises them together, and one of them says it all."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _find(inner, kind)) is not None:
                return found
    return None
