"""Which CPU acceleration is available to PyTorch here, as strings for logs and run metadata."""

from __future__ import annotations

import importlib
import platform

import torch


def _try(fn: object) -> str:
    try:
        return str(fn() if callable(fn) else fn)
    except Exception as exc:  # a report must never fail
        return f"unknown ({type(exc).__name__})"


def _ipex_version() -> str | None:
    try:
        ipex = importlib.import_module("intel_extension_for_pytorch")
    except Exception:  # ImportError, or a broken install raising anything at import
        return None
    return str(getattr(ipex, "__version__", "unknown"))


def _onednn() -> bool:
    return bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]


def _bf16_native() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def accel_report() -> dict[str, str]:
    """Backend facts: IPEX (if importable), oneDNN, bf16, CPU ISA, torch version, threads.

    Training always runs plain fp32 PyTorch on the CPU ("used"); IPEX is reported, not applied.
    """
    ipex = _ipex_version()
    return {
        "used": "torch-cpu-fp32",
        "ipex": ipex if ipex is not None else "not installed",
        "torch": torch.__version__,
        "onednn": _try(lambda: "available" if _onednn() else "no"),
        "bf16_autocast": _try(lambda: "yes" if torch.amp.is_autocast_available("cpu") else "no"),
        "bf16_native": _try(lambda: "yes" if _bf16_native() else "no"),
        "cpu_capability": _try(torch.backends.cpu.get_cpu_capability),
        "machine": _try(platform.machine),
        "threads": _try(torch.get_num_threads),
        "interop_threads": _try(torch.get_num_interop_threads),
    }
