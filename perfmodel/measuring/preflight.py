"""Checks a measuring command makes before it starts: its time budget, torch, a CUDA GPU.

``perfmodel measure`` and ``perfmodel calibrate bench`` (and their ``python -m`` entries) refuse
in one line (:class:`~perfmodel.errors.InputError`) when torch or transformers are missing (a
plain ``pip install .`` has neither; they come with the ``gpu`` extra) and when there is no CUDA
GPU: on a CPU they would build full-size models for minutes, or write CPU tables beside the GPU
data. torch is looked up without being imported, so the check works where it is absent.

The runners themselves also work on a CPU with tiny models, which the tests use: the hidden
option ``--allow-cpu``, or ``PERFMODEL_ALLOW_CPU=1`` in the environment, lets a command run
without a GPU.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys

from perfmodel.errors import InputError

#: Environment variable that lets measuring commands run on a CPU (``1``, ``true`` or ``yes``).
ALLOW_CPU_ENV = "PERFMODEL_ALLOW_CPU"
GPU_EXTRA = "pip install 'perfmodel[gpu]'"
#: Modules every measuring command imports (both come with the ``gpu`` extra).
GPU_MODULES = ("torch", "transformers")


def check_budget(budget_s: float | None, option: str = "--budget-s") -> float | None:
    """A wall-time budget in seconds: None (no budget) or a finite number > 0, else InputError."""
    if budget_s is None:
        return None
    try:
        value = float(budget_s)
    except (TypeError, ValueError):
        raise InputError(f"{option} must be a number of seconds, got {budget_s!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{option} must be a finite number of seconds > 0, got {budget_s}")
    return value


def cpu_allowed(flag: bool = False) -> bool:
    """Whether measuring may run without a GPU: ``flag`` (``--allow-cpu``) or ``$PERFMODEL_ALLOW_CPU``."""
    return flag is True or os.environ.get(ALLOW_CPU_ENV, "").strip().lower() in ("1", "true", "yes")


def _installed(name: str) -> bool:
    """Whether ``name`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module already imported without a spec counts as present
        return sys.modules.get(name) is not None


def require_gpu_libraries(command: str) -> None:
    """Refuse (InputError, one line) unless torch and transformers are installed; imports neither."""
    missing = [m for m in GPU_MODULES if not _installed(m)]
    if missing:
        raise InputError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
                         f"{command} needs the GPU extra ({GPU_EXTRA})")


def require_gpu(command: str, elsewhere: str, allow_cpu: bool = False) -> None:
    """Refuse (InputError, one line) without a CUDA GPU, unless ``allow_cpu`` or ``$PERFMODEL_ALLOW_CPU``.

    ``command`` names what refuses (``measure``); ``elsewhere`` says what works without a GPU.
    """
    if cpu_allowed(allow_cpu):
        return
    try:
        import torch
    except ImportError as exc:
        raise InputError(f"torch cannot be imported ({exc}); {command} needs the GPU extra ({GPU_EXTRA})") from None
    if not torch.cuda.is_available():
        raise InputError(f"no CUDA GPU here; {command} runs on a GPU machine ({elsewhere})")


def require_gpu_stack(command: str, elsewhere: str, allow_cpu: bool = False) -> None:
    """:func:`require_gpu_libraries`, then :func:`require_gpu` (``allow_cpu`` waives the GPU only)."""
    require_gpu_libraries(command)
    require_gpu(command, elsewhere, allow_cpu)
