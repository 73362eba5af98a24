"""This host's training speed, measured once per machine and model and cached on disk.

An estimate must be a pure function of its inputs. The host's speed is one of them (emulated
devices cannot train faster than the host), so it is measured once, stored with the identity of
the machine it was measured on, and reused; `--host-speed` gives it outright. The cache lives in
$XDG_CACHE_HOME/fedmq/ (else ~/.cache/fedmq/); a different CPU, core count or torch version
misses it and calibrates again.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_NAME = "host-speed.json"


@dataclass(frozen=True)
class HostSpeed:
    flops: float  # FLOP/s this host trains the model at (best of a few epochs)
    source: str  # "flag" (given), "cache" (calibrated before, or just now and stored)
    calibrated: str = ""  # ISO date of the measurement
    path: str = ""  # the cache file it came from or went to

    def describe(self) -> str:
        """The same line whether it was calibrated just now or read back: output is repeatable."""
        if self.source == "flag":
            return f"host speed: {self.flops:.3g} FLOP/s (given by --host-speed)"
        return (
            f"host speed: {self.flops:.3g} FLOP/s (calibrated {self.calibrated}, cached in "
            f"{self.path}; --host-speed to override)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {"flops": self.flops, "source": self.source, "calibrated": self.calibrated,
                "path": self.path}  # fmt: skip


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedmq"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(model: str, feature_shape: tuple[int, ...], batch_size: int) -> str:
    """What the figure depends on: the CPU, how many, torch, and the workload measured."""
    import torch

    parts = (
        _cpu_model(), f"cpus={os.cpu_count()}", f"torch={torch.__version__}",
        f"threads={torch.get_num_threads()}", f"model={model}",
        f"shape={'x'.join(map(str, feature_shape))}", f"batch={batch_size}",
    )  # fmt: skip
    return " | ".join(parts)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def host_speed(
    model: str,
    feature_shape: tuple[int, ...],
    batch_size: int,
    measure: Callable[[], float],
    *,
    given: float | None = None,
    recalibrate: bool = False,
    directory: Path | None = None,
) -> HostSpeed:
    """The cached figure for this machine and workload; `measure()` runs only on a miss.

    A cache that cannot be written (read-only home) costs a calibration per call, not an error.
    """
    if given is not None:
        return HostSpeed(float(given), "flag")
    path = (directory or cache_dir()) / CACHE_NAME
    key = machine_key(model, feature_shape, batch_size)
    entries = _read(path)
    entry = entries.get(key)
    if not recalibrate and isinstance(entry, dict) and float(entry.get("flops", 0)) > 0:
        return HostSpeed(
            float(entry["flops"]), "cache", str(entry.get("calibrated", "")), str(path)
        )
    log.info("calibrating this host's training speed for %s (once per machine)", model)
    flops = float(measure())
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    entries[key] = {"flops": flops, "calibrated": today}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: concurrent estimates never read half a file
    except OSError as exc:
        log.warning("could not cache the host speed in %s: %s", path, exc)
    return HostSpeed(flops, "cache", today, str(path))
