"""Device and link profiles: the catalogue, link shaping, compute slow-down, traffic estimation.

One profile drives emulation (`LinkShaper`, `compute_seconds`), estimation and deployment.
"""

from fedmq.tinyml_profiles.profiles import (
    LinkProfile,
    Profile,
    catalogue,
    format_bps,
    format_bytes,
    get_profile,
    load_profile_file,
    parse_fleet,
)

__all__ = [
    "LinkProfile",
    "Profile",
    "catalogue",
    "format_bps",
    "format_bytes",
    "get_profile",
    "load_profile_file",
    "parse_fleet",
]
