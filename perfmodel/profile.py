"""Engine profiles: efficiencies, fixed latencies and engine options, as YAML data.

A profile says how fast an engine runs each op class relative to the GPU's peaks. Efficiency
η of an op class is a fraction of peak, constant or saturating in the op's size x:

    η(x) = η_max · x / (x + x_half)        (x_half = 0: constant η_max)

Lookup for ``--engine NAME --gpu G``: ``calibration/profiles/<G>-<NAME>.yaml`` (fitted to that
GPU), else ``calibration/profiles/<NAME>.yaml`` (any GPU).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, ValidationError

from perfmodel.errors import SpecError
from perfmodel.paths import PROFILES_DIR

OP_CLASSES = ("gemm", "grouped_gemm", "attention", "elementwise", "comm")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Efficiency(_Strict):
    """η of one op class: compute and memory maxima (fractions of peak) and half sizes."""

    compute: float = Field(gt=0, le=1.5)
    memory: float = Field(gt=0, le=1.5)
    compute_half: NonNegativeFloat = 0.0
    memory_half: NonNegativeFloat = 0.0


class Latency(_Strict):
    """Fixed costs, seconds."""

    per_kernel_s: NonNegativeFloat = 0.0
    per_layer_s: NonNegativeFloat = 0.0
    per_step_s: NonNegativeFloat = 0.0
    link_step_s: NonNegativeFloat | None = Field(
        default=None, description="One collective step; default: the GPU spec's link latency."
    )


class Options(_Strict):
    """Engine behaviour that changes what is computed or stored."""

    decode_attention_span: Literal["context", "allocated"] = "context"
    mla_cache: Literal["latent", "expanded"] = "latent"
    mla_absorb_decode: bool = True
    memory_usable_fraction: float = Field(default=0.9, gt=0, le=1)


class ErrorBand(_Strict):
    """Relative error half-widths (e.g. 0.08 = ±8%) per metric, from held-out residuals."""

    ttft: PositiveFloat
    decode_step: PositiveFloat
    e2e: PositiveFloat
    throughput: PositiveFloat
    source: str = ""


class EngineProfile(_Strict):
    """One engine on one GPU (or on any GPU when ``gpu`` is null)."""

    name: str
    engine: str
    gpu: str | None = None
    calibrated: bool = False
    description: str = ""
    peaks: Literal["datasheet", "measured"] = "datasheet"
    efficiency: dict[Literal["gemm", "grouped_gemm", "attention", "elementwise", "comm"], Efficiency]
    latency: Latency = Latency()
    options: Options = Options()
    error_band: ErrorBand | None = None
    fitted_from: str | None = None

    def model_post_init(self, _context: object) -> None:
        missing = [c for c in OP_CLASSES if c not in self.efficiency]
        if missing:
            raise ValueError(f"efficiency is missing op classes: {', '.join(missing)}")


def load_profile_file(path: Path) -> EngineProfile:
    """Load and validate one profile YAML."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"malformed YAML in {path}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise SpecError(f"cannot read profile {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    try:
        return EngineProfile(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise SpecError(f"invalid profile {path.name}: {loc + ': ' if loc else ''}{err['msg']}") from None


@cache
def load_profile(engine: str, gpu: str) -> EngineProfile:
    """The profile for an engine on a GPU (GPU-specific file first, then the generic one)."""
    path = Path(engine)
    if path.suffix in (".yaml", ".yml"):
        return load_profile_file(path)
    for candidate in (PROFILES_DIR / f"{gpu}-{engine}.yaml", PROFILES_DIR / f"{engine}.yaml"):
        if candidate.exists():
            return load_profile_file(candidate)
    raise SpecError(f"unknown engine '{engine}' for GPU '{gpu}' (known: {', '.join(list_engines())})")


def list_engines() -> list[str]:
    """Profile names available (file stems under calibration/profiles)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
