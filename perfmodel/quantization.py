"""Quantization schemes as data (``specs/quantization.yaml``): what each stores and runs at.

A scheme applies to the linear layers (QKV/O projections, routed and shared experts, dense
MLP; :mod:`perfmodel.ops.quant` has their formulas), all of them or those it names, and says:
bits per weight, the scales it adds, which tensor-core peak its GEMMs run at, whether
activations are quantized on the fly, and the in-kernel dequantization of a weight-only
kernel. A checkpoint stored in a scheme is known by its config.json's ``quantization_config``:
its ``quant_method`` and the fields that tell one method's formats apart
(:func:`checkpoint_scheme`). :meth:`QuantScheme.values` turns it
into the numbers of the formulas' symbols (bytes per element and per scale).

``--dtype fp8|int8|fp4`` stays an alias of the scheme whose ``dtype_alias`` names it: the
linear layers quantized, everything else at bf16 (:func:`resolve`).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import sympy as sp
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationError

from perfmodel import symbols as s
from perfmodel.errors import InputError, SpecError
from perfmodel.ops.quant import LINEAR_LAYERS
from perfmodel.paths import SPECS_DIR
from perfmodel.specs.files import read_mapping

#: The schemes' file.
SCHEMES_FILE = SPECS_DIR / "quantization.yaml"
#: The scheme of a workload that names none (and of ``--dtype`` bf16/fp16/fp32).
NO_QUANT = "none"
#: The dtype of the unquantized weights and activations under an alias dtype (``--dtype fp8``).
ALIAS_BASE_DTYPE = "bf16"
#: Names of the linear layers a scheme can store quantized (:attr:`QuantScheme.layers`,
#: :data:`perfmodel.ops.quant.LINEAR_LAYERS`).
LinearLayer = Literal["attention", "experts", "shared_experts", "dense_mlp"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class WeightScales(_Strict):
    """Scales of the quantized weights: one per tensor (negligible, not counted), per output
    channel, per ``block`` (rows × cols) of weights or per ``group`` of weights along the input;
    ``bytes`` per scale, ``zero_bytes`` per group for an asymmetric zero point."""

    granularity: Literal["none", "tensor", "channel", "block", "group"] = "none"
    block: tuple[PositiveInt, PositiveInt] | None = None
    group: PositiveInt | None = None
    bytes: NonNegativeFloat = 0.0
    zero_bytes: NonNegativeFloat = 0.0

    def model_post_init(self, _context: object) -> None:
        if (self.block is not None) != (self.granularity == "block"):
            raise ValueError("'block' [rows, cols] is given for block scales, and only for them")
        if (self.group is not None) != (self.granularity == "group"):
            raise ValueError("'group' is given for group scales, and only for them")
        if self.zero_bytes and self.granularity != "group":
            raise ValueError("'zero_bytes' applies to group scales only")

    def per_element(self) -> float:
        """Scale bytes per weight element (block and group scales), bytes."""
        if self.block is not None:
            return self.bytes / (self.block[0] * self.block[1])
        if self.group is not None:
            return (self.bytes + self.zero_bytes) / self.group
        return 0.0

    def per_channel(self) -> float:
        """Scale bytes per output channel (per-channel scales), bytes."""
        return self.bytes if self.granularity == "channel" else 0.0


class ActivationQuant(_Strict):
    """Activations quantized on the fly before each GEMM: ``bits`` per element and a scale of
    ``scale_bytes`` per row (``token``) or per ``group`` elements of a row."""

    granularity: Literal["token", "group"]
    bits: PositiveInt
    group: PositiveInt | None = None
    scale_bytes: NonNegativeFloat = 0.0

    def model_post_init(self, _context: object) -> None:
        if (self.group is not None) != (self.granularity == "group"):
            raise ValueError("'group' is given for group scales, and only for them")


class MoETile(_Strict):
    """The tile of a scheme's MoE kernel, elements: output columns per tile (BLOCK_N) and input
    depth per step of its K loop (BLOCK_K) (:func:`perfmodel.ops.moe.tile_floor`)."""

    n: PositiveInt
    k: PositiveInt


class QuantScheme(_Strict):
    """One quantization scheme of the linear layers (the file's header says each field)."""

    name: str
    description: str
    aliases: tuple[str, ...] = ()
    dtype_alias: str | None = Field(default=None, description="The --dtype this scheme is an alias of.")
    weight_bits: PositiveInt | None = None
    compute: Literal["activations", "fp8", "int8", "fp4"] = "activations"
    weight_scales: WeightScales = WeightScales()
    activations: ActivationQuant | None = None
    dequant_flops_per_weight: NonNegativeFloat = 0.0
    layers: tuple[LinearLayer, ...] = LINEAR_LAYERS
    checkpoints: tuple[dict[str, Any], ...] = Field(
        default=(), description="The config.json quantization_config blocks of checkpoints stored in this "
        "scheme: each gives fields (dotted paths into the block) and their values, null for absent or null; "
        "every one names quant_method.")
    moe_row_blocks: tuple[tuple[PositiveFloat | None, PositiveInt], ...] | None = Field(
        default=None, description="The row block of the routed experts' kernel by the mean rows "
        "per expert, T·k/E, where the kernel picks it so (Marlin), as ((at most rows, M), ..., "
        "(null, M)); absent: the engine profile's tiers by the pass's tokens (options.moe_block_m)")
    moe_tile: MoETile | None = Field(
        default=None, description="The tile of the routed experts' kernel, whose waves of K loops set a "
        "floor under its time (its times per step: the engine profile's quantization entry).")

    def model_post_init(self, _context: object) -> None:
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError("'layers' names each quantized linear layer once, at least one")
        if self.weight_bits is None and (self.weight_scales.granularity != "none" or self.activations
                                         or self.dequant_flops_per_weight or self.compute != "activations"):
            raise ValueError("a scheme without weight_bits quantizes nothing: no scales, "
                             "activations, dequantization or compute dtype")
        blocks = self.moe_row_blocks
        if blocks is not None:
            bounds = [bound for bound, _ in blocks]
            if not bounds or bounds[-1] is not None or None in bounds[:-1] or bounds[:-1] != sorted(set(bounds[:-1])):
                raise ValueError("'moe_row_blocks' gives rising row bounds, the last null (any more rows)")
        if any(not isinstance(fields.get("quant_method"), str) for fields in self.checkpoints):
            raise ValueError("each of 'checkpoints' names its quant_method")
        if (self.activations is None) != (self.compute == "activations"):
            raise ValueError("low-precision compute (fp8, int8, fp4) needs quantized activations, "
                             "and weight-only compute ('activations') has none")

    @property
    def quantizes_weights(self) -> bool:
        """The linear layers' weights are stored at ``weight_bits``."""
        return self.weight_bits is not None

    @property
    def quantizes_activations(self) -> bool:
        """Each quantized GEMM's input is quantized on the fly before it."""
        return self.activations is not None

    def compute_dtype(self, base: str) -> str:
        """The peak key (:meth:`perfmodel.specs.hardware.GPUSpec.peak`) the quantized GEMMs run
        at; ``base``: the unquantized layers' compute dtype (a weight-only kernel's)."""
        return base if self.compute == "activations" else self.compute

    def values(self, base_bytes: float) -> dict[sp.Symbol, float]:
        """The numbers of the quantization symbols (:mod:`perfmodel.symbols`): bytes per
        weight element of the quantized linear layers (b_q; ``base_bytes``, the unquantized
        dtype's, without quantization), scale bytes per weight element (z_g) and
        per output channel (z_c), activations written at b_aq bytes per element with z_ar
        scale bytes per row and z_ae per element, n_dq dequantization FLOP-equivalents per
        weight read, and the MoE kernel's tile (N_tile, K_tile; 1 without one: no floor is then
        built, :attr:`perfmodel.graph.GraphOptions.moe_tiled`)."""
        weight = base_bytes if self.weight_bits is None else self.weight_bits / 8
        a = self.activations
        return {
            s.b_q: weight,
            s.z_g: self.weight_scales.per_element(), s.z_c: self.weight_scales.per_channel(),
            s.b_aq: a.bits / 8 if a else 0.0,
            s.z_ar: a.scale_bytes if a and a.granularity == "token" else 0.0,
            s.z_ae: a.scale_bytes / a.group if a and a.group else 0.0,
            s.n_dq: self.dequant_flops_per_weight,
            s.N_tile: self.moe_tile.n if self.moe_tile else 1,
            s.K_tile: self.moe_tile.k if self.moe_tile else 1,
        }


@cache
def load_schemes() -> dict[str, QuantScheme]:
    """Every scheme of ``specs/quantization.yaml`` by name."""
    data = read_mapping(SCHEMES_FILE, SpecError, expected="a mapping 'schemes: {name: scheme}'")
    if not isinstance(data.get("schemes"), dict):
        raise SpecError(f"{SCHEMES_FILE.name}: expected a mapping 'schemes: {{name: scheme}}'")
    schemes: dict[str, QuantScheme] = {}
    for name, fields in data["schemes"].items():
        try:
            schemes[str(name)] = QuantScheme(name=str(name), **(fields or {}))
        except (TypeError, ValidationError) as exc:
            msg = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
            loc = ".".join(str(p) for p in msg["loc"])
            raise SpecError(f"invalid scheme '{name}' in {SCHEMES_FILE.name}: "
                            f"{loc + ': ' if loc else ''}{msg['msg']}") from None
    names = [n for scheme in schemes.values() for n in (scheme.name, *scheme.aliases)]
    names += ["checkpoint " + ", ".join(f"{key}={value}" for key, value in sorted(fields.items()))
              for scheme in schemes.values() for fields in scheme.checkpoints]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes or NO_QUANT not in schemes:
        raise SpecError(f"{SCHEMES_FILE.name}: " + (f"name or alias given twice: {', '.join(dupes)}"
                                                      if dupes else f"no '{NO_QUANT}' scheme"))
    return schemes


def scheme_names() -> tuple[str, ...]:
    """The schemes' names (aliases not included)."""
    return tuple(load_schemes())


def _by_name() -> dict[str, QuantScheme]:
    return {n: scheme for scheme in load_schemes().values() for n in (scheme.name, *scheme.aliases)}


def _field(block: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of a nested mapping, None where any step is missing."""
    value: Any = block
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def checkpoint_scheme(block: Any) -> str | None:
    """The scheme a checkpoint's ``quantization_config`` (a mapping) stores it in: the scheme one
    of whose :attr:`QuantScheme.checkpoints` the block matches in every field, the most fields
    where several match (fp8 with ``weight_block_size`` [128, 128] is fp8-block, fp8 without it
    fp8); None for a block no scheme describes, or two schemes describe alike."""
    if not isinstance(block, dict) or block.get("quant_method") is None:
        return None
    matches = [(len(fields), scheme.name) for scheme in load_schemes().values() for fields in scheme.checkpoints
               if all(_field(block, path) == value for path, value in fields.items())]
    if not matches:
        return None
    most = max(count for count, _ in matches)
    best = {name for count, name in matches if count == most}
    return best.pop() if len(best) == 1 else None


def checkpoint_forms(quant_method: str) -> list[str]:
    """How the schemes read a checkpoint of ``quant_method``: one ``scheme (field=value, ...)`` per
    form a scheme describes, for a message about a block none matched (empty: a method no scheme
    reads)."""
    return [f"{scheme.name} ({', '.join(f'{k}={v}' for k, v in fields.items() if k != 'quant_method') or 'as is'})"
            for scheme in load_schemes().values() for fields in scheme.checkpoints
            if fields.get("quant_method") == quant_method]


def dtype_aliases() -> dict[str, QuantScheme]:
    """``--dtype`` values that are aliases of a scheme (fp8, int8, fp4) → the scheme."""
    return {scheme.dtype_alias: scheme for scheme in load_schemes().values() if scheme.dtype_alias}


def check_quant(value: Any) -> str | None:
    """A ``quant`` argument: None, or a scheme name or alias, as the scheme's name."""
    if value is None:
        return None
    schemes = _by_name()
    if not isinstance(value, str) or value not in schemes:
        shown = f"'{value}'" if isinstance(value, str) else repr(value)
        raise InputError(f"unknown quant {shown} (known: {', '.join(scheme_names())})")
    return schemes[value].name


def resolve(quant: str | None, dtype: str) -> QuantScheme:
    """The scheme of a workload: ``quant`` (a name or alias), else the scheme ``dtype`` is an
    alias of, else none. A ``quant`` that contradicts an alias dtype is refused."""
    aliased = dtype_aliases().get(dtype)
    if quant is None:
        return aliased or load_schemes()[NO_QUANT]
    scheme = load_schemes()[check_quant(quant)]  # type: ignore[index]
    if aliased is not None and aliased.name != scheme.name:
        raise InputError(f"--dtype {dtype} means --quant {aliased.name}; with --quant {scheme.name} "
                         f"give the unquantized layers' dtype (--dtype {ALIAS_BASE_DTYPE})")
    return scheme


def base_dtype(dtype: str) -> str:
    """The dtype of the unquantized weights and of the activations: ``dtype``, or bf16 when
    ``dtype`` is a scheme's alias (fp8, int8, fp4)."""
    return ALIAS_BASE_DTYPE if dtype in dtype_aliases() else dtype
