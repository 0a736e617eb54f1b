"""Hardware specifications: GPUs as data, validated on load.

Every GPU is one YAML file in ``specs/hardware/``; adding a GPU is adding a file. Units are
stated in the field names: ``*_tflops`` in 10^12 FLOP/s (dense, not 2:4 sparse), ``*_tb_s``
in 10^12 B/s, ``*_gb_s`` in 10^9 B/s (per GPU, one direction), ``*_gib`` in GiB (2^30 B),
``*_mib`` in MiB, ``*_w`` in watts.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from perfmodel.errors import SpecError
from perfmodel.paths import HARDWARE_DIR
from perfmodel.specs.files import read_mapping

#: Compute dtypes a GPU may list a dense peak for.
PeakDtype = Literal["fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp6", "fp4"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Interconnect(_Strict):
    """Scale-up links of one GPU."""

    name: str = Field(description="Link family, e.g. 'NVLink 4', 'xGMI (Infinity Fabric)'.")
    bandwidth_gb_s: PositiveFloat = Field(
        description="Per-GPU scale-up bandwidth, one direction, 10^9 B/s."
    )
    latency_us: PositiveFloat = Field(
        default=2.0, description="Small-message one-way latency of a collective step, µs."
    )


class MeasuredCeilings(_Strict):
    """Ceilings measured on a real card (not datasheet figures)."""

    date: str = Field(description="ISO date of the measurement.")
    source: str = Field(description="Where the numbers come from.")
    matmul_bf16_tflops: PositiveFloat | None = None
    matmul_fp8_tflops: PositiveFloat | None = None
    copy_tb_s: PositiveFloat | None = Field(
        default=None, description="Device-to-device copy, bytes read + written per second."
    )
    kernel_launch_in_graph_us: PositiveFloat | None = None
    notes: str | None = None


class GPUSpec(_Strict):
    """One GPU model: datasheet peaks (dense) and memory system."""

    name: str = Field(description="Canonical short name, also the file stem (e.g. 'h200-sxm').")
    full_name: str
    vendor: Literal["nvidia", "amd", "intel", "other"]
    aliases: list[str] = Field(default_factory=list)
    architecture: str
    sm_count: PositiveInt = Field(description="Streaming multiprocessors (NVIDIA) or CUs (AMD).")
    peak_tflops: dict[PeakDtype, PositiveFloat] = Field(
        description="Dense peak per compute dtype, 10^12 FLOP/s (no 2:4 sparsity)."
    )
    hbm_bandwidth_tb_s: PositiveFloat
    hbm_capacity_gib: PositiveFloat = Field(description="Usable device memory, GiB.")
    l2_cache_mib: PositiveFloat
    interconnect: Interconnect | None = Field(
        default=None, description="Scale-up link (NVLink/xGMI); None for PCIe-only parts."
    )
    pcie_gb_s: PositiveFloat = Field(description="PCIe bandwidth per direction, 10^9 B/s.")
    gpus_per_node: PositiveInt
    tdp_w: PositiveFloat
    measured: MeasuredCeilings | None = None

    def peak(self, dtype: str) -> float:
        """Dense peak for a compute dtype in FLOP/s; fp16 and bf16 share a peak."""
        key = "bf16" if dtype in ("bf16", "fp16") and "bf16" in self.peak_tflops else dtype
        if key not in self.peak_tflops:
            raise SpecError(f"GPU '{self.name}' lists no {dtype} peak")
        return self.peak_tflops[key] * 1e12  # type: ignore[index]

    @property
    def hbm_bandwidth(self) -> float:
        """HBM bandwidth, B/s."""
        return self.hbm_bandwidth_tb_s * 1e12

    @property
    def hbm_capacity_bytes(self) -> float:
        """Device memory, bytes."""
        return self.hbm_capacity_gib * 2**30


def load_gpu_file(path: Path) -> GPUSpec:
    """Load and validate one hardware YAML file."""
    data = read_mapping(path, SpecError)
    try:
        return GPUSpec(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise SpecError(f"{path}: invalid field '{loc}': {err['msg']}") from None


@cache
def gpu_catalog(directory: Path = HARDWARE_DIR) -> dict[str, GPUSpec]:
    """All GPUs in a spec folder, keyed by lower-case name and aliases."""
    catalog: dict[str, GPUSpec] = {}
    owners: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        spec = load_gpu_file(path)
        for key in {k.lower() for k in [spec.name, *spec.aliases]}:
            if key in owners:
                raise SpecError(f"GPU name '{key}' is given by both {owners[key].name} and {path.name} "
                                f"in {directory}")
            catalog[key], owners[key] = spec, path
    return catalog


def load_gpu(name: str) -> GPUSpec:
    """A GPU by name or alias (case-insensitive), or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return load_gpu_file(path)
    catalog = gpu_catalog()
    try:
        return catalog[name.lower()]
    except KeyError:
        known = ", ".join(sorted({g.name for g in catalog.values()}))
        raise SpecError(f"unknown GPU '{name}' (known: {known})") from None
