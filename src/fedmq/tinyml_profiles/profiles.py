"""Device and link profiles: a small TOML (or YAML) file each, with the source of every figure.

The built-in catalogue lives in `catalogue/`; a user passes the path of their own file instead of
a name. One profile drives emulation (shaper, compute slow-down), estimation and deployment.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fedmq.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class LinkProfile:
    up_bps: float  # uplink (device -> broker) bit/s
    down_bps: float  # downlink bit/s
    rtt_ms: float = 0.0  # round-trip time; the shaper delays each direction by half
    jitter_ms: float = 0.0  # +- uniform jitter on each one-way delay (order is kept)
    outage_every_s: float = 0.0  # mean time between outages (exponential); 0 = never
    outage_s: float = 0.0  # each outage cuts the connection for this long
    max_payload: int = 131072  # largest MQTT payload the link/broker path accepts

    @property
    def one_way_s(self) -> float:
        return self.rtt_ms / 2000.0


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    description: str
    ram_bytes: int  # memory available for training
    flops: float  # sustained FLOP/s for training code
    link: LinkProfile
    codec: str = "fp32+zstd"  # the uplink codec this device should use by default
    train: str = "all"  # "all", or "head": the device trains (and sends) only the last layer
    sources: Mapping[str, str] = field(default_factory=dict)
    path: str = ""  # the file it came from

    def summary(self) -> str:
        link = self.link
        return (
            f"up {format_bps(link.up_bps):>10}  down {format_bps(link.down_bps):>10}  "
            f"rtt {link.rtt_ms:>6g} ms  RAM {format_bytes(self.ram_bytes):>9}  "
            f"{self.flops / 1e9:>7.3g} GFLOP/s"
        )


def format_bps(bps: float) -> str:
    for unit, scale in (("Gb/s", 1e9), ("Mb/s", 1e6), ("kb/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} b/s"


def format_bytes(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


_LINK_KEYS = {f for f in LinkProfile.__dataclass_fields__}


def _number(where: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{where}: must be {'> 0' if positive else '>= 0'}, got {value}")
    return float(value)


def profile_from_dict(data: Mapping[str, Any], where: str) -> Profile:
    try:
        name, device, link = data["name"], data["device"], data["link"]
    except KeyError as exc:
        raise ConfigError(
            f"{where}: missing {exc.args[0]!r} (need name, [device], [link])"
        ) from None
    if not isinstance(name, str) or not name or "/" in name or ":" in name or "," in name:
        raise ConfigError(f"{where}: name must be a non-empty string without / : ,")
    if not isinstance(device, dict) or not isinstance(link, dict):
        raise ConfigError(f"{where}: [device] and [link] must be tables")
    unknown = set(link) - _LINK_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown [link] keys {sorted(unknown)}")
    values = {k: _number(f"{where} link.{k}", v) for k, v in link.items() if k != "max_payload"}
    for key in ("up_bps", "down_bps"):
        if key not in values:
            raise ConfigError(f"{where}: [link] needs {key}")
        _number(f"{where} link.{key}", values[key], positive=True)
    max_payload = link.get("max_payload", 131072)
    if isinstance(max_payload, bool) or not isinstance(max_payload, int) or max_payload < 1:
        raise ConfigError(f"{where}: link.max_payload must be a positive integer")
    ram = device.get("ram_bytes")
    if isinstance(ram, bool) or not isinstance(ram, int) or ram <= 0:
        raise ConfigError(f"{where}: device.ram_bytes must be a positive integer")
    train = data.get("train", "all")
    if train not in ("all", "head"):
        raise ConfigError(f'{where}: train must be "all" or "head", got {train!r}')
    sources = data.get("sources", {})
    if not isinstance(sources, dict):
        raise ConfigError(f"{where}: [sources] must be a table")
    return Profile(
        name=name,
        description=str(data.get("description", "")),
        ram_bytes=ram,
        flops=_number(f"{where} device.flops", device.get("flops"), positive=True),
        link=LinkProfile(**values, max_payload=max_payload),
        codec=str(data.get("codec", "fp32+zstd")),
        train=train,
        sources={str(k): str(v) for k, v in sources.items()},
        path=where,
    )


def load_profile_file(path: str | Path) -> Profile:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"profile file {p}: {exc.strerror or exc}") from None
    try:
        if p.suffix in {".yaml", ".yml"}:
            import yaml  # type: ignore[import-untyped]

            data = yaml.safe_load(text)
        else:
            data = tomllib.loads(text.decode())
    except Exception as exc:  # parser errors of either format, and bad UTF-8
        raise ConfigError(f"profile file {p}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"profile file {p}: expected a table at the top")
    return profile_from_dict(data, str(p))


def catalogue() -> dict[str, Profile]:
    """The built-in profiles, by name."""
    out = {}
    for entry in sorted(resources.files(__package__).joinpath("catalogue").iterdir(),
                        key=lambda e: e.name):  # fmt: skip
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text())
            profile = profile_from_dict(data, f"catalogue/{entry.name}")
            out[profile.name] = profile
    return out


def get_profile(name_or_path: str) -> Profile:
    """A catalogue name, or the path of a .toml/.yaml profile file."""
    if name_or_path.endswith((".toml", ".yaml", ".yml")) or "/" in name_or_path:
        return load_profile_file(name_or_path)
    profiles = catalogue()
    if name_or_path not in profiles:
        raise ConfigError(
            f"unknown profile {name_or_path!r}; built in: {', '.join(profiles)} "
            "(or give the path of a .toml file)"
        )
    return profiles[name_or_path]


def parse_fleet(text: str) -> list[Profile]:
    """`esp32s3-wifi:4,pi4-ethernet:4,./my.toml:2` -> one Profile per edge, in order."""
    fleet: list[Profile] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.rpartition(":")
        if not name:
            name, count = count, "1"
        try:
            n = int(count)
        except ValueError:
            raise ConfigError(f"fleet entry {part!r}: expected PROFILE:COUNT") from None
        if n < 1:
            raise ConfigError(f"fleet entry {part!r}: count must be >= 1")
        fleet.extend([get_profile(name)] * n)
    if not fleet:
        raise ConfigError("empty fleet; expected e.g. esp32s3-wifi:4,pi4-ethernet:4")
    return fleet
