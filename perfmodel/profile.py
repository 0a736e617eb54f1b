"""Engine profiles: efficiencies, fixed latencies and engine options, as YAML data.

A profile says how fast an engine runs each op class relative to the GPU's peaks. Efficiency
η of an op class is a fraction of peak, constant or saturating:

    η(u) = η_max · u / (u + u_half)        (u_half = 0: constant η_max)

in the op's size x for compute (GEMM rows, tokens per expert, keys attended: ``compute_half``
in that unit) and in the bytes moved for memory and links (``memory_half`` in bytes). Those
variables keep an op's time non-decreasing in its work (:mod:`perfmodel.roofline` says why).

Lookup for ``--engine NAME --gpu G``: ``calibration/profiles/<G>-<NAME>.yaml`` (fitted to that
GPU), else ``calibration/profiles/<NAME>.yaml`` (any GPU).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, ValidationError

from perfmodel.errors import SpecError
from perfmodel.ops.base import OpClass
from perfmodel.paths import PROFILES_DIR
from perfmodel.specs.files import read_data

#: Op classes every profile gives η curves for (:meth:`perfmodel.ops.OpClass.required`).
OP_CLASSES = tuple(c.value for c in OpClass.required())
#: Op classes a profile may tune separately; without an entry they run as their fallback
#: (:class:`perfmodel.ops.OpClass` says what each is).
OPTIONAL_OP_CLASSES = {c.value: c.fallback.value for c in OpClass.optional()}
#: Keys of a profile's ``efficiency`` mapping: the op classes' names.
OpClassName = Literal[tuple(c.value for c in OpClass)]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Efficiency(_Strict):
    """η of one op class: compute and memory maxima (fractions of peak) and half-saturation
    points: ``compute_half`` in the op's size unit, ``memory_half`` in bytes."""

    compute: float = Field(gt=0, le=1.5)
    memory: float = Field(gt=0, le=1.5)
    compute_half: NonNegativeFloat = 0.0
    memory_half: NonNegativeFloat = 0.0


class Latency(_Strict):
    """Fixed costs, seconds."""

    per_kernel_s: NonNegativeFloat = 0.0
    per_layer_s: NonNegativeFloat = 0.0
    per_step_s: NonNegativeFloat = 0.0
    eager_layer_s: NonNegativeFloat = Field(
        default=0.0, description="Host time to launch one layer's kernels in an eager pass.")
    eager_step_s: NonNegativeFloat = Field(
        default=0.0, description="Host time of an eager pass outside its layers.")
    link_step_s: NonNegativeFloat | None = Field(
        default=None, description="One collective step; default: the GPU spec's link latency."
    )


class Options(_Strict):
    """Engine behaviour that changes what is computed or stored."""

    decode_attention_span: Literal["context", "allocated"] = "context"
    mla_cache: Literal["latent", "expanded"] = "latent"
    mla_absorb_decode: bool = True
    decode_kv_expand: bool = False
    prefill_eager: bool = Field(
        default=False, description="Prefill runs eagerly: its time is at least the host's launch time.")
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
    efficiency: dict[OpClassName, Efficiency]
    latency: Latency = Latency()
    options: Options = Options()
    error_band: ErrorBand | None = None
    fitted_from: str | None = None
    fit: dict[str, Any] | None = Field(
        default=None, description="How the profile was fitted: data, split, residual statistics.")

    def model_post_init(self, _context: object) -> None:
        missing = [c for c in OP_CLASSES if c not in self.efficiency]
        if missing:
            raise ValueError(f"efficiency is missing op classes: {', '.join(missing)}")

    def efficiency_of(self, op_class: str) -> Efficiency:
        """η of an op class, an optional class falling back to its base class."""
        if op_class in self.efficiency:
            return self.efficiency[op_class]  # type: ignore[index]
        return self.efficiency[OPTIONAL_OP_CLASSES[op_class]]  # type: ignore[index]


def load_profile_file(path: Path) -> EngineProfile:
    """Load and validate one profile YAML."""
    try:
        data = read_data(path)
    except ValueError as exc:
        raise SpecError(f"malformed YAML in {path}: {exc}") from None
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


#: The engine a prediction uses unless told otherwise: vLLM, what users serve MoE models with,
#: fitted on the H200 (``calibration/profiles/h200-sxm-vllm.yaml``) and transferred to other GPUs as
#: fractions of their datasheet peaks. ``roofline`` (datasheet peaks, stated derates) stays
#: available as the uncalibrated bound.
DEFAULT_ENGINE = "vllm"

#: What an engine name may be: letters, digits, '.', '_' and '-' (no path, no glob pattern).
_ENGINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@cache
def load_profile(engine: str, gpu: str) -> EngineProfile:
    """The profile for an engine on a GPU.

    Lookup: ``<gpu>-<engine>.yaml`` (fitted on that GPU), else ``<engine>.yaml`` (any GPU),
    else a profile of that engine fitted on another GPU, transferred: its efficiencies are
    fractions of datasheet peaks, applied to this GPU's peaks (the prediction's provenance
    says so).
    """
    path = Path(engine)
    if path.suffix in (".yaml", ".yml"):
        return load_profile_file(path)
    if _ENGINE_NAME.fullmatch(engine):  # a name, never a pattern or a path
        for candidate in (PROFILES_DIR / f"{gpu}-{engine}.yaml", PROFILES_DIR / f"{engine}.yaml"):
            if candidate.is_file():
                return load_profile_file(candidate)
        for candidate in sorted(PROFILES_DIR.glob(f"*-{engine}.yaml")):
            fitted = load_profile_file(candidate)
            if fitted.engine == engine:
                return fitted
    raise SpecError(f"unknown engine '{engine}' for GPU '{gpu}' (known: {', '.join(list_engines())})")


def list_engines() -> list[str]:
    """Engine names available: generic profiles and the engines of fitted ones."""
    names = set()
    for path in PROFILES_DIR.glob("*.yaml"):
        profile = load_profile_file(path)
        names.add(profile.engine)
    return sorted(names)
