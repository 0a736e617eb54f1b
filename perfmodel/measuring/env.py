"""Provenance of a measurement: GPU, driver, CUDA, library versions, date, git commit.

Everything here is best effort and never raises: a missing tool gives ``None``. The driver
version is read the way ``torch.utils.collect_env`` reads it (``nvidia-smi``'s header), through
a command runner with a time limit; the GPU name, CUDA and torch versions come from torch
itself, as collect_env's do (its own GPU and Python strings carry more than the fields recorded
here, e.g. ``GPU 0: NVIDIA H200`` and the compiler of the interpreter, so the plain values are
kept). collect_env's full report (pip and conda packages, compilers, CPU) takes about a second
and is not recorded per row.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def run_command(command: str | list[str], timeout_s: float = 5.0) -> tuple[int, str, str]:
    """(return code, stdout, stderr) of a command, as ``torch.utils.collect_env.run`` returns
    them, but never waiting longer than ``timeout_s`` (return code 1 on any failure)."""
    try:
        out = subprocess.run(command, shell=isinstance(command, str), capture_output=True, text=True,
                             timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return 1, "", ""
    return out.returncode, out.stdout.strip(), out.stderr.strip()


@cache
def git_commit() -> str | None:
    """The commit of the working tree: ``$PERFMODEL_GIT_COMMIT`` if set, else ``git rev-parse``.

    The environment variable comes first because the device machine gets a copy of the tree
    without ``.git``; the command that starts the run passes the commit along.
    """
    env = os.environ.get("PERFMODEL_GIT_COMMIT", "").strip()
    if env:
        return env
    code, out, _ = run_command(["git", "-C", str(_REPO), "rev-parse", "HEAD"])
    return out if code == 0 and out else None


@cache
def driver_version() -> str | None:
    """The NVIDIA driver version, by ``torch.utils.collect_env`` from ``nvidia-smi`` (None
    without either)."""
    try:
        from torch.utils import collect_env

        return collect_env.get_nvidia_driver_version(run_command) or None
    except Exception:  # noqa: BLE001 - no torch, or an output collect_env cannot parse
        return None


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - the measuring side always has torch
        return None
    return torch


def device_kind() -> str:
    """``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``."""
    torch = _torch()
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


@cache
def gpu_name() -> str:
    """The marketing name of GPU 0 (``"NVIDIA H200"``), or ``"cpu"``."""
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def gpu_short_name(name: str | None = None) -> str:
    """A folder-friendly short name: ``"NVIDIA H200"`` -> ``"h200"``; CPU -> ``"cpu"``."""
    name = (name or gpu_name()).lower()
    name = re.sub(r"^(nvidia|amd)\s+", "", name)
    name = re.sub(r"[^a-z0-9.]+", "-", name).strip("-")
    return name or "unknown"


@cache
def gpu_properties() -> dict[str, Any]:
    """SM count, memory (bytes), L2 size (bytes) and compute capability of GPU 0 ({} on CPU)."""
    torch = _torch()
    if torch is None or not torch.cuda.is_available():
        return {}
    p = torch.cuda.get_device_properties(0)
    return {
        "gpu_sm_count": p.multi_processor_count,
        "gpu_memory_bytes": int(p.total_memory),
        "gpu_l2_bytes": int(getattr(p, "L2_cache_size", 0)) or None,
        "gpu_capability": f"{p.major}.{p.minor}",
    }


def provenance() -> dict[str, Any]:
    """The provenance fields every result row and bench table carries."""
    torch = _torch()
    cuda = torch.version.cuda if torch is not None else None
    return {
        "gpu_name": gpu_name(),
        "gpu_count": (torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0),
        "driver": driver_version(),
        "cuda": cuda,
        "torch": torch.__version__ if torch is not None else None,
        "transformers": _version("transformers"),
        "triton": _version("triton"),
        "vllm": _version("vllm"),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        **gpu_properties(),
    }
