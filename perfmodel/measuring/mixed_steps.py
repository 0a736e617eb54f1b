"""What a profiled mixed step says about itself (``scripts/profile_mixed_steps.py`` rows,
``validate/results/<gpu>-vllm-mixed-steps.jsonl``): whether the host or the GPU set it.

A row's step adds a prompt to D running decodes on a synchronous engine; its ``profiles.mixed``
holds the GPU kernels' busy time (ms) of one profiled such step. The prompt alone (D = 0) of a
model is host-bound when its kernels were busy for at most :data:`HOST_BOUND` of its wall time:
its launch floor set it, and more host work would show in full; else the GPU set it and more
host work hides behind the kernels. The MLA term's fit (:mod:`perfmodel.calibration.fit_mla_split`)
and the comparison with the model (:mod:`perfmodel.validate.mixed_steps`) read it alike.
"""

from __future__ import annotations

from typing import Any

#: Largest share of a step's wall time its GPU kernels may be busy for the host to have set it.
HOST_BOUND = 0.6


def busy_ms(row: dict[str, Any]) -> float | None:
    """The GPU kernels' busy time (ms) of a row's profiled mixed step; None where not profiled."""
    return ((row.get("profiles") or {}).get("mixed") or {}).get("busy_ms")


def host_bound(row: dict[str, Any]) -> bool | None:
    """Whether the host set a row's step (its kernels busy for at most :data:`HOST_BOUND` of its
    wall time); None where the step was not profiled."""
    busy = busy_ms(row)
    return None if busy is None else busy <= HOST_BOUND * row["mixed_median_ms"]


def group_name(row: dict[str, Any]) -> str:
    """A row's model with its overrides (``deepseek-v2-lite num_hidden_layers=8``): the name the
    MLA fit's record gives its pairs, and the comparison its rows."""
    cut = " ".join(row.get("overrides") or [])
    return f"{row['model']}{' ' + cut if cut else ''}"
