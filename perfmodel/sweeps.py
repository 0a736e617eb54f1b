"""What-if sweeps: a grid of workloads and hyperparameters, evaluated in one vectorized call.

Each distinct model of the grid (one combination of the hyperparameter keys) is built once,
by the same loading and checks as :func:`perfmodel.prediction.predict` with those values as
overrides; its numbers and the numeric workload keys are fed as numpy arrays to the same
lambdified expressions a single prediction uses (one call per model structure); categorical
keys (gpu, engine, dtype, kv_dtype, quant, moe_impl, spec_draft) loop. The result is a pandas DataFrame with
one row per valid combination.

What-ifs: ``prune_experts`` / ``prune_ffn`` build each point's model pruned
(:mod:`perfmodel.pruning`); ``spec_draft`` (a draft model, or ``none``), ``spec_tokens`` (γ)
and ``spec_accept`` (α) evaluate speculative decoding (:mod:`perfmodel.speculative`), γ and α
vectorized like the workload keys.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np
from pydantic import ValidationError

from perfmodel.errors import InputError, validation_message
from perfmodel.graph import model_values
from perfmodel.prediction import (
    COUNT_METRICS, DTYPE_BYTES, METRICS, PHASES, Workload, check_choice, check_count, check_memory_share, check_model,
    check_name, check_overrides, compile_model, graph_options, layout_gpus, numeric_values, structure_key,
)
from perfmodel.ops.moe import MOE_IMPLS, busiest_z
from perfmodel.quantization import check_quant
from perfmodel.profile import DEFAULT_ENGINE, load_profile
from perfmodel.pruning import PRUNE_KEYS, check_ratio, prune
from perfmodel.speculative import (
    PLAIN_DECODE_ONLY, SPEC_KEYS, SPEC_METRICS, check_acceptance, check_draft, draft_workload, load_draft,
    speculative_outputs, tokens_per_step,
)
from perfmodel.specs.hardware import load_gpu
from perfmodel.specs.layout import Layout, layout_holds
from perfmodel.specs.families import EXPERT_KNOBS, KNOBS
from perfmodel.specs.model import MAX_INT, ModelSpec, load_model
from perfmodel.specs.zoo import config_field
from perfmodel.waves import WAVE_METRICS, one_pass, run_in_waves

#: Numeric grid keys → the symbol they set: the workload's (speculative decoding's γ and α
#: among them), then the friendly names of the model's hyperparameters
#: (:data:`perfmodel.specs.families.KNOBS`) that have a symbol, then the pruning ratios (which
#: set E and I_e through the pruned model).
GRID_SYMBOLS = {
    "batch": "B", "input_len": "S", "output_len": "O", "context": "L", "tp": "tp", "ep": "ep",
    "pp": "pp", "dp": "dp", "skew": "sigma", "spec_tokens": "gamma", "spec_accept": "alpha",
    **{k.name: k.symbol for k in KNOBS.values() if k.symbol},
    "prune_experts": "E", "prune_ffn": "I_e",
}
#: Numeric grid keys of the workload; the others are the model's hyperparameters.
WORKLOAD_KEYS = ("batch", "input_len", "output_len", "context", "tp", "ep", "pp", "dp", "skew",
                 "spec_tokens", "spec_accept")
MODEL_KEYS = tuple(k for k in GRID_SYMBOLS if k not in WORKLOAD_KEYS)
CATEGORICAL = ("gpu", "engine", "dtype", "kv_dtype", "quant", "moe_impl", "spec_draft")
#: Workload fields a sweep takes as fixed keyword arguments.
FIXED_KEYS = ("batch", "input_len", "output_len", "context", "tp", "ep", "pp", "dp", "expert_parallel", "dtype",
              "kv_dtype", "skew", "quant", "moe_impl", "host_probe_ms")
#: What-if options a sweep takes as fixed keyword arguments (pruning, speculative decoding).
WHATIF_KEYS = (*PRUNE_KEYS, *SPEC_KEYS)
#: Largest grid (combinations, before invalid ones are dropped) a sweep builds by default: a
#: row takes about 200 bytes, so 10^7 rows are about 2 GB.
MAX_POINTS = 10_000_000
#: Grid keys that are fractions, not counts.
_FRACTION_KEYS = ("skew", "spec_accept", *PRUNE_KEYS)
_INTEGER_KEYS = set(GRID_SYMBOLS) - set(_FRACTION_KEYS)
#: The value of ``spec_draft`` that means no speculative decoding.
NO_DRAFT = "none"
#: Model grid keys → the ModelSpec field they set, for a sweep over a ModelSpec (no config).
_SPEC_FIELDS = {k.name: k.spec for k in KNOBS.values() if k.name in MODEL_KEYS}


def _known_keys() -> str:
    return ", ".join(sorted([*GRID_SYMBOLS, *CATEGORICAL]))


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["batch=1,16,64", "dtype=bf16,fp8"]`` → ``{"batch": [1, 16, 64], "dtype": [...]}``.

    A key given twice is refused (one would silently win).
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not raw.strip():
            raise InputError(f"bad --grid '{item}': expected KEY=V1,V2,...")
        if key == "model":
            raise InputError("models are swept by the first argument, comma-separated: "
                             "perfmodel sweep mixtral,qwen3-30b-a3b --grid ...")
        if key not in GRID_SYMBOLS and key not in CATEGORICAL:
            raise InputError(f"unknown grid key '{key}' (known: {_known_keys()})")
        if key in grid:
            raise InputError(f"--grid {key} is given twice: give all its values once ({key}=V1,V2,...)")
        values: list[Any] = [v.strip() for v in raw.split(",")]
        if any(values) and not all(values):
            raise InputError(f"bad --grid '{item}': an empty value between commas")
        values = [v for v in values if v]
        if key in GRID_SYMBOLS:
            try:
                values = [float(v) for v in values]
            except ValueError:
                raise InputError(f"bad --grid values for '{key}': {raw}") from None
        if len(set(values)) < len(values):
            raise InputError(f"bad --grid '{item}': a value given twice")
        grid[key] = values
    return grid


#: Grid keys that only mean something for a model with routed experts.
_MOE_KEYS = (*(k for k in EXPERT_KNOBS if k in GRID_SYMBOLS), *PRUNE_KEYS)


def _axis_values(key: str, values: Any) -> np.ndarray | list[Any]:
    """One grid axis: a list (tuple, range, numpy array, pandas Series) of values; numbers for a
    numeric key (bools and strings refused), names for a categorical one."""
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple, range, np.ndarray)):
        values = values.tolist()  # a pandas Series or Index
    if not isinstance(values, (list, tuple, range, np.ndarray)):
        raise InputError(f"grid key '{key}' needs a list of values, got {type(values).__name__} {values!r}")
    if key in CATEGORICAL:
        return list(np.asarray(values, dtype=object).ravel()) if isinstance(values, np.ndarray) else list(values)
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iuf":
            raise InputError(f"grid values of '{key}' must be numbers, got an array of {values.dtype}")
        return values.astype(float).ravel()
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InputError(f"grid values of '{key}' must be numbers, got {value!r}")
    return np.asarray(values, dtype=float).ravel()


def _check_numeric(key: str, values: np.ndarray) -> None:
    if values.size == 0:
        raise InputError(f"grid key '{key}' has no values")
    if not np.all(np.isfinite(values)):
        raise InputError(f"grid values of '{key}' must be finite numbers")
    if key == "skew":
        if np.any((values < 0) | (values > 1)):
            raise InputError("skew must be in [0, 1]")
        return
    if key in ("spec_accept", *PRUNE_KEYS):
        if np.any((values < 0) | (values >= 1)):
            raise InputError(f"{key.replace('_', '-')} must be in [0, 1)")
        return
    if np.any(values <= 0) and key not in ("num_shared_experts",):
        raise InputError(f"grid values of '{key}' must be positive")
    if np.any(values < 0):
        raise InputError(f"grid values of '{key}' must not be negative")
    if key in _INTEGER_KEYS and np.any(values != np.round(values)):
        raise InputError(f"grid values of '{key}' must be integers")
    if np.any(values > MAX_INT):
        raise InputError(f"grid values of '{key}' are too large (at most 2^53)")


def _check_categorical(key: str, values: list[Any]) -> None:
    if not values:
        raise InputError(f"grid key '{key}' has no values")
    for value in values:
        if key in ("gpu", "engine"):
            check_name(key, value)
        elif key == "spec_draft":
            check_draft(value)
        elif key == "quant":
            check_quant(value)
        elif key == "moe_impl":
            check_choice(key, value, MOE_IMPLS)
        else:
            check_choice(key, value, DTYPE_BYTES, optional=key == "kv_dtype")


def _check_model(spec: ModelSpec, numeric: dict[str, np.ndarray]) -> None:
    """Grid keys the model has nothing to apply to."""
    if spec.moe is None:
        moe_keys = [k for k in _MOE_KEYS if k in numeric]
        if moe_keys or ("ep" in numeric and np.any(numeric["ep"] != 1)):
            raise InputError(f"grid key '{(moe_keys or ['ep'])[0]}' needs a model with experts")
    if {"num_shared_experts", "shared_expert_intermediate_size"} & set(numeric) and not (
            spec.moe and spec.moe.n_shared):
        raise InputError("this model has no shared experts to sweep (add them with --set first)")


def _check_duplicates(spec: ModelSpec, grid: dict[str, Any], fixed: dict[str, Any],
                      overrides: dict[str, Any], given: dict[str, Any]) -> None:
    """A value given twice would silently win over the other: refuse it."""
    for key in grid:
        if fixed.get(key) is not None or given.get(key) is not None:
            flag = key.replace("_", "-")
            raise InputError(f"'{key}' is both swept (grid) and fixed (--{flag} / {key}=): give it once")
    by_symbol: dict[str, str] = {}
    for key in grid:
        if key in MODEL_KEYS:
            other = by_symbol.setdefault(GRID_SYMBOLS[key], key)
            if other != key:
                raise InputError(f"grid keys '{other}' and '{key}' set the same hyperparameter: give one")
    swept = {config_field(spec.model_type, k): k for k in grid if k in MODEL_KEYS}
    for key in overrides:
        field = config_field(spec.model_type, key)
        if field in swept:
            raise InputError(f"'{swept[field]}' is both swept (grid) and set (--set {key}): give it once")


@dataclass
class _Models:
    """The distinct models of a grid, on the open mesh (model axes full, others of length 1)."""

    group: np.ndarray  # per model point: index into ``specs`` (one per structure), −1 if refused
    specs: list[ModelSpec]
    values: dict[str, Any]  # symbol name → number, or array over the model axes
    reasons: list[str]  # why points were refused (the first of each kind)


def _variant(model: str | ModelSpec, overrides: dict[str, Any], point: dict[str, Any],
             pruning: dict[str, float]) -> ModelSpec:
    """The model at one grid point: the model ``predict`` loads, by the same function, with
    the point's hyperparameters as overrides, then pruned by the point's ratios (else the
    fixed ``pruning`` ratios). A ModelSpec, which has no config, gets the point's values in
    its fields, validated."""
    ratios = {**pruning, **{k: v for k, v in point.items() if k in PRUNE_KEYS}}
    point = {k: v for k, v in point.items() if k not in PRUNE_KEYS}
    built = load_model(model, {**overrides, **point}) if isinstance(model, str) else _with_fields(model, point)
    return prune(built, ratios.get("prune_experts"), ratios.get("prune_ffn"))


def _with_fields(model: ModelSpec, point: dict[str, Any]) -> ModelSpec:
    """A ModelSpec with the point's hyperparameters in its fields, validated."""
    data = model.model_dump()
    for key, value in point.items():
        *path, last = _SPEC_FIELDS[key]
        target = data
        for part in path:
            target = target[part]
        target[last] = value
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"invalid model: {validation_message(exc)}") from None


def _tiles_key(variant: ModelSpec) -> tuple[float, float] | None:
    """The routed experts' shape where vLLM ships a tuned table for it (whose tiles, not the
    default rule's, then run it: :func:`perfmodel.prediction.moe_default_tiles`), else None:
    variants of one structure whose experts meet different tiles are built apart."""
    from perfmodel.moe_tables import shipped_shape

    moe = variant.moe
    return None if moe is None else shipped_shape(moe.n_experts, moe.expert_intermediate)


def _models(model: str | ModelSpec, spec: ModelSpec, overrides: dict[str, Any],
            names: list[str], numeric: dict[str, np.ndarray], pruning: dict[str, float]) -> _Models:
    """Build and check each distinct model of the grid once (see :func:`_variant`); ``spec``
    is the model without grid keys."""
    base = {sym.name: value for sym, value in model_values(spec).items()}
    keys = [n for n in names if n in MODEL_KEYS]
    mesh = tuple(len(numeric[n]) if n in MODEL_KEYS else 1 for n in names)
    if not keys:
        return _Models(np.zeros(mesh, dtype=np.int64), [spec], base, [])
    sub = tuple(len(numeric[k]) for k in keys)
    group = np.full(math.prod(sub), -1, dtype=np.int64)
    symbols = list(base)
    rows = np.tile(np.array([base[name] for name in symbols], dtype=float), (group.size, 1))
    structures: dict[tuple, int] = {}
    specs: list[ModelSpec] = []
    reasons: list[str] = []
    columns = [[float(v) if k in PRUNE_KEYS else int(v) for v in numeric[k]] for k in keys]
    for flat, values in enumerate(itertools.product(*columns)):
        point = dict(zip(keys, values))
        try:
            variant = _variant(model, overrides, point, pruning)
        except InputError as exc:
            if len(reasons) < 3:
                reasons.append(f"{', '.join(f'{k}={v}' for k, v in point.items())}: {exc}")
            continue
        key = (structure_key(variant), _tiles_key(variant))
        if key not in structures:
            structures[key] = len(specs)
            specs.append(variant)
        group[flat] = structures[key]
        rows[flat] = list(model_values(variant).values())
    arrays = {name: rows[:, i] for i, name in enumerate(symbols)}
    values = {name: (float(a[0]) if np.all(a == a[0]) else a.reshape(mesh))
              for name, a in arrays.items()}
    return _Models(group.reshape(mesh), specs, values, reasons)


def _layout_reason(model: str | ModelSpec, overrides: dict[str, Any], workload: Workload,
                   numeric: dict[str, np.ndarray], index: tuple, pruning: dict[str, float]) -> str:
    """Why the layout at one grid point does not suit that point's model or batch (predict's message)."""
    point = {k: (float(v[i]) if k in PRUNE_KEYS else int(v[i]))
             for (k, v), i in zip(numeric.items(), index) if k in _INTEGER_KEYS or k in PRUNE_KEYS}
    variant = _variant(model, overrides, {k: v for k, v in point.items() if k in MODEL_KEYS}, pruning)
    layout = Layout(*(point.get(k, getattr(workload, k)) for k in ("tp", "ep", "pp", "dp")),
                    workload.expert_parallel)
    shown = ", ".join(f"{k}={v}" for k, v in point.items())
    batch = point.get("batch", workload.batch)
    try:
        layout.check(variant)
        replace(workload, batch=batch, dp=layout.dp)  # each rank runs batch/dp sequences
    except InputError as exc:
        return f"{shown + ': ' if shown else ''}{exc}"
    return f"{shown}: the layout does not suit the model"  # pragma: no cover - rules agree


@dataclass
class _Speculation:
    """Speculative decoding over a sweep: the fixed γ and α (by symbol name), or the fixed
    accepted length τ, and the draft models by name (None for :data:`NO_DRAFT`)."""

    fixed: dict[str, float]
    accepted_len: float | None
    drafts: dict[str, ModelSpec | None]

    def tokens(self, values: dict[str, Any]) -> Any:
        """τ at the values (numbers or arrays) of γ and α."""
        return self.accepted_len if self.accepted_len is not None else tokens_per_step(values["alpha"], values["gamma"])


def _speculation(spec: ModelSpec, numeric: dict[str, np.ndarray], categorical: dict[str, list[Any]],
                 whatif: dict[str, Any], workload: Workload) -> _Speculation | None:
    """Check the speculative-decoding keys of a sweep, swept or fixed, and load the drafts."""
    names = categorical.get("spec_draft") or ([whatif["spec_draft"]] if "spec_draft" in whatif else [])
    keys = [k for k in ("spec_tokens", "spec_accept", "spec_accepted_len") if k in numeric or k in whatif]
    if not names:
        if keys:
            raise InputError(f"{keys[0]} needs a draft model (spec_draft)")
        return None
    swept = [k for k in ("tp", "ep", "pp", "dp") if k in numeric]
    if swept:
        raise InputError(f"with speculative decoding, {swept[0]} is a fixed value (the draft runs on the "
                         "target's GPUs), not swept")
    drafts = {name: None if name == NO_DRAFT else load_draft(check_draft(name), spec) for name in names}
    for draft in drafts.values():
        if draft is not None:
            draft_workload(workload, draft)
    fixed: dict[str, float] = {}
    if "spec_tokens" in whatif:
        fixed["gamma"] = check_count("spec_tokens", whatif["spec_tokens"])
    elif "spec_tokens" not in numeric:
        raise InputError("speculative decoding needs spec_tokens (γ, draft tokens per step)")
    fewest = int(numeric["spec_tokens"].min()) if "spec_tokens" in numeric else int(fixed["gamma"])
    if "spec_accept" in numeric:
        if "spec_accepted_len" in whatif:
            raise InputError("give spec-accept (α) or spec-accepted-len (τ), not both")
        return _Speculation(fixed, None, drafts)
    accept, accepted_len = check_acceptance(fewest, whatif.get("spec_accept"), whatif.get("spec_accepted_len"))
    if accept is not None:
        fixed["alpha"] = accept
    return _Speculation(fixed, accepted_len, drafts)


def _with_speculation(speculation: _Speculation, target: ModelSpec, draft: ModelSpec, phase: str,
                      profile: Any, workload: Workload, values: dict[str, Any], draft_base: dict[str, Any],
                      outputs: dict[str, Any], gpu: str) -> dict[str, Any]:
    """The outputs of one model of the grid with speculative decoding by ``draft``
    (:func:`perfmodel.speculative.speculative_outputs`), at the grid's workload values on
    ``gpu`` (a spec name)."""
    values = {**values, **speculation.fixed}
    draft_values = {**draft_base, **{name: values[name] for name in ("B", "S", "O", "L")}}
    spec_out, _ = speculative_outputs(target, draft, phase, profile, workload, values, draft_values,
                                      outputs, speculation.tokens(values), gpu=gpu)
    nan = {name: np.full(np.shape(outputs[name]), np.nan) for name in PLAIN_DECODE_ONLY if name in outputs}
    return {**outputs, **nan, **{n: v for n, v in spec_out.items() if n in METRICS or n in SPEC_METRICS}}


def _at_points(values: dict[str, Any], where: np.ndarray) -> dict[str, Any]:
    """``values`` (numbers, or arrays of the grid's open mesh) at the True points of ``where``
    (a boolean mask over the whole grid): one 1-D array per array, in C order; numbers as they
    are."""
    return {name: np.broadcast_to(value, where.shape)[where] if np.ndim(value) else value
            for name, value in values.items()}


def sweep(model: str | ModelSpec, grid: dict[str, Any], *, gpu: str | None = None,
          engine: str | None = None, phase: str = "request",
          overrides: list[str] | dict[str, Any] | None = None, max_points: int = MAX_POINTS,
          gpu_memory_utilization: float | None = None, **fixed: Any):
    """Evaluate every combination of ``grid`` (other workload fields from ``fixed``).

    ``grid`` maps keys (:data:`GRID_SYMBOLS` and :data:`CATEGORICAL`) to lists of values;
    ``fixed`` takes the workload fields of :data:`FIXED_KEYS` and the what-ifs of
    :data:`WHATIF_KEYS` (pruning ratios, speculative decoding: ``spec_accepted_len`` is fixed
    only); ``gpu`` and ``engine`` default to h200-sxm and vllm. A key may be given once:
    swept, fixed or set, not two of them. A grid of more than ``max_points`` combinations is
    refused before it is built. ``gpu_memory_utilization``: the share of each GPU's memory the
    engine may fill (vLLM's flag; None: the profile's), as :func:`perfmodel.prediction.predict`.

    ``grid["model"]``, a list of models, sweeps the rest of the grid for each of them
    (:mod:`perfmodel.sweep_models`; ``model`` itself is then not read), one table with a
    ``model`` column first.

    Returns a pandas DataFrame: one column per grid key, then the metrics of
    :data:`perfmodel.prediction.METRICS` (seconds, bytes, tokens/s), with speculative decoding
    those of :data:`perfmodel.speculative.SPEC_METRICS` (NaN where ``spec_draft`` is
    ``none``), ``fits_in_memory``, ``concurrent_sequences`` and ``kv_waves`` (a request whose
    KV cache does not hold the batch at once runs in waves: :mod:`perfmodel.waves`), ``gpus``
    (GPUs of the tp/ep/pp/dp layout) and ``throughput_per_gpu_tok_s`` (throughput over them). Each row equals
    :func:`perfmodel.prediction.predict` with the row's values (hyperparameters as overrides):
    each distinct model passes predict's checks, and combinations predict would refuse are
    dropped (top_k > num_experts, num_heads not a multiple of num_kv_heads, a head width of 0,
    a tp/ep/pp layout that does not suit the model (:mod:`perfmodel.specs.layout`)...);
    ``table.attrs["dropped"]`` says how many and why (the first of each kind). A grid with no
    valid combination is an error.

    The numeric keys are fed to the compiled function as an open (sparse) mesh: each
    intermediate is computed over the grid axes it depends on only, and just the outputs are
    expanded to one value per combination.
    """
    import pandas as pd

    if isinstance(grid, dict) and "model" in grid:  # several models: the same grid for each
        from perfmodel.sweep_models import sweep_models

        return sweep_models(grid["model"], {k: v for k, v in grid.items() if k != "model"}, gpu=gpu,
                            engine=engine, phase=phase, overrides=overrides, max_points=max_points,
                            gpu_memory_utilization=gpu_memory_utilization, **fixed)
    phase = check_choice("phase", phase, PHASES)  # type: ignore[assignment]
    share = None if gpu_memory_utilization is None else check_memory_share(gpu_memory_utilization)
    model = check_model(model)
    overrides = check_overrides(overrides)
    if isinstance(model, ModelSpec) and overrides:
        raise InputError("overrides apply to a zoo name or a config.json, not to a ModelSpec")
    given = {"gpu": gpu, "engine": engine}
    gpu = check_name("gpu", gpu) if gpu is not None else "h200-sxm"
    engine = check_name("engine", engine) if engine is not None else DEFAULT_ENGINE
    max_points = check_count("max_points", max_points)
    whatif = {k: fixed.pop(k) for k in WHATIF_KEYS if k in fixed and fixed[k] is not None}
    fixed = {k: v for k, v in fixed.items() if k not in WHATIF_KEYS}
    unknown = [k for k in fixed if k not in FIXED_KEYS]
    if unknown:
        raise InputError(f"unknown sweep argument '{unknown[0]}' (known: gpu, engine, phase, "
                         f"overrides, max_points, {', '.join((*FIXED_KEYS, *WHATIF_KEYS))})")
    pruning = {k: check_ratio(k, whatif[k]) for k in PRUNE_KEYS if k in whatif}
    if not isinstance(grid, dict):
        raise InputError(f"grid must be a dict of KEY: [values], got {type(grid).__name__}")
    bad = [k for k in grid if k not in GRID_SYMBOLS and k not in CATEGORICAL]
    if bad:
        raise InputError(f"unknown grid key {bad[0]!r} (known: {_known_keys()})")
    axes_values = {k: _axis_values(k, v) for k, v in grid.items()}
    size = math.prod(len(v) for v in axes_values.values())
    if size > max_points:
        raise InputError(f"the grid has {size:,} combinations, more than the limit of "
                         f"{max_points:,} (raise it with --max-points, or max_points=)")
    if phase != "decode" and ("context" in grid or fixed.get("context") is not None):
        raise InputError(f"context applies to the decode phase only, not to phase '{phase}': "
                         "use phase decode, or leave it out")
    # a swept batch is checked against dp below, one value at a time; a swept dp against each batch
    workload = Workload(**{**fixed, **({"batch": fixed.get("dp", 1)} if "batch" in grid and "batch" not in fixed
                                       else {}), **({"dp": 1} if "dp" in grid else {})})
    numeric = {k: v for k, v in axes_values.items() if k in GRID_SYMBOLS}
    categorical = {k: v for k, v in axes_values.items() if k in CATEGORICAL}
    for key, values in numeric.items():
        _check_numeric(key, values)  # type: ignore[arg-type]
    uneven = [b for b in numeric.get("batch", []) if b % workload.dp]  # a fixed dp: every batch its multiple
    if uneven:
        raise InputError(f"batch ({uneven[0]}) must be a multiple of dp ({workload.dp}): each data-parallel "
                         "rank runs batch/dp sequences")
    for key, cat_values in categorical.items():
        _check_categorical(key, cat_values)  # type: ignore[arg-type]
    loaded = model if isinstance(model, ModelSpec) else load_model(model, overrides)
    spec = prune(loaded, pruning.get("prune_experts"), pruning.get("prune_ffn"))
    _check_duplicates(spec, grid, fixed, overrides, {**given, **whatif})
    _check_model(spec, numeric)  # type: ignore[arg-type]
    speculation = _speculation(spec, numeric, categorical, whatif, workload)  # type: ignore[arg-type]
    if speculation is not None and phase == "prefill" and any(d is not None for d in speculation.drafts.values()):
        raise InputError("speculative decoding changes decode steps only: a prefill has none "
                         "(phase request or decode)")
    if spec.moe is None and workload.ep != 1:
        raise InputError("ep > 1 needs a model with experts")
    names = list(numeric)
    shape = tuple(len(v) for v in numeric.values())
    axes = dict(zip(names, np.meshgrid(*numeric.values(), indexing="ij", sparse=True))) if names else {}
    models = _models(model, spec, overrides, names, numeric, pruning)  # type: ignore[arg-type]
    degrees = {**{k: axes.get(k, getattr(workload, k)) for k in ("tp", "ep", "pp", "dp")},
               "expert_parallel": workload.expert_parallel}
    built, suits = models.group >= 0, False
    for index, variant in enumerate(models.specs):  # the layout rules apply by model structure
        suits = suits | ((models.group == index) & layout_holds(variant, {**models.values, **degrees}))
    if "dp" in axes:  # each rank runs batch/dp sequences
        suits = suits & (np.asarray(axes.get("batch", workload.batch)) % axes["dp"] == 0)
    valid = np.broadcast_to(built & suits, shape)
    reasons = list(models.reasons)
    unsuited = np.broadcast_to(built & ~suits, shape)
    if unsuited.any():
        reasons.append(_layout_reason(model, overrides, workload, numeric,
                                      np.unravel_index(int(np.argmax(unsuited)), shape), pruning))
    if not valid.any():
        raise InputError("no valid combination in the grid: " + "; ".join(reasons))
    keep_all = bool(valid.all())
    n_kept = int(valid.sum())

    def flatten(array: Any) -> np.ndarray:
        """One value per valid combination, in C order of the grid (always a new array)."""
        full = np.broadcast_to(array, shape)
        return full.flatten() if keep_all else full[valid]

    columns = {n: flatten(a.astype(np.int64) if n in _INTEGER_KEYS else a) for n, a in axes.items()}
    gpus = flatten(np.asarray(layout_gpus(*(axes.get(k, getattr(workload, k)) for k in ("tp", "ep", "pp", "dp"))),
                              dtype=np.int64))
    combos = list(itertools.product(*categorical.values()))
    setups = []  # every combination checked before any is evaluated
    for combo in combos:
        cat = dict(zip(categorical, combo))
        gpu_spec = load_gpu(cat.get("gpu", gpu))
        profile = load_profile(cat.get("engine", engine), gpu_spec.name)
        if share is not None:
            profile = profile.with_memory_fraction(share)
        point_workload = replace(workload, **{k: cat[k] for k in ("dtype", "kv_dtype", "quant", "moe_impl")
                                              if k in cat}).stored_as(models.specs[0])
        point_workload.check_moe_impl(models.specs[0])
        draft = speculation and speculation.drafts[cat.get("spec_draft", whatif.get("spec_draft"))]
        draft_base = draft and numeric_values(draft, gpu_spec, profile, draft_workload(point_workload, draft))
        setups.append((gpu_spec, profile, point_workload,
                       numeric_values(models.specs[0], gpu_spec, profile, point_workload), draft, draft_base))
    metric_parts: list[dict[str, np.ndarray]] = []
    for gpu_spec, profile, point_workload, base_values, draft, draft_base in setups:
        capacity = profile.usable_bytes(gpu_spec)
        waves = phase == "request" and profile.options.kv_waves  # else one pass: fits whole or not
        merged: dict[str, Any] = {}
        for index, variant in enumerate(models.specs):
            compiled = compile_model(variant, phase, profile, with_ops=False,
                                     options=graph_options(profile, point_workload, variant, gpu_spec.name))
            values = {**base_values, **models.values}
            if "context" not in numeric and "input_len" in numeric and phase == "decode" \
                    and point_workload.context is None:
                values["L"] = axes["input_len"]
            for key, axis in axes.items():
                if key in WORKLOAD_KEYS:
                    values[GRID_SYMBOLS[key]] = axis
            if "batch" in axes or "dp" in axes:  # a batch is every data-parallel rank's: B is one rank's
                values["B"] = axes.get("batch", workload.batch) // np.asarray(values["dp"])
            if {"tp", "ep", "dp"} & set(axes):  # the busiest of the GPUs holding whole experts
                values["z_busy"] = busiest_z(values["tp"], values["ep"], values["dp"], workload.expert_parallel)

            def run(values: dict[str, Any]) -> dict[str, Any]:
                out = compiled.fn(*[values[a] for a in compiled.args])
                outputs = {name: value for name, value in zip(compiled.expressions, out) if name in METRICS}
                if draft:
                    outputs = _with_speculation(speculation, variant, draft, phase, profile, point_workload,
                                                values, draft_base, outputs, gpu_spec.name)
                return outputs

            # the open mesh evaluates invalid combinations (and other structures' models) too,
            # dropped below, and every branch of a step function's numpy.where: no warnings for
            # them (a number that is not finite in a row kept is said by the command line)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                outputs = run(values)
                if waves:
                    # B over the whole grid: the points in waves index every input of ``run``
                    outputs = run_in_waves(outputs, np.broadcast_to(values["B"], shape), values["S"],
                                           values["O"], capacity, profile.options.prefill_chunk_tokens,
                                           profile.max_sequences,
                                           lambda batch, where: run({**_at_points(values, where), "B": batch}),
                                           ranks=np.asarray(values["dp"]),
                                           reserved=profile.activation_reserve is not None)
            if len(models.specs) == 1:
                merged = outputs
            else:
                mine = models.group == index
                merged = {name: np.where(mine, value, merged.get(name, np.nan))
                          for name, value in outputs.items()}
        metrics = {name: flatten(np.asarray(value, dtype=float)) for name, value in merged.items()}
        for name in SPEC_METRICS if speculation else ():  # rows without a draft
            metrics.setdefault(name, np.full(n_kept, np.nan))
        if waves:  # runs in waves of B_run ≥ 1 sequences
            metrics["fits_in_memory"] = metrics["concurrent_sequences"] >= 1
        else:
            metrics["fits_in_memory"] = metrics["memory_bytes"] <= capacity
            metrics = one_pass(metrics, columns["batch"] if "batch" in columns else workload.batch)
        metric_parts.append(metrics)
    n_combos = len(combos)
    data: dict[str, Any] = {}
    for key, column in columns.items():
        data[key] = np.tile(column, n_combos) if n_combos > 1 else column
    for i, key in enumerate(categorical):
        data[key] = np.repeat(np.asarray([c[i] for c in combos], dtype=object), n_kept)
    for name in [*[m for m in (*METRICS, *SPEC_METRICS) if m in metric_parts[0]], "fits_in_memory", *WAVE_METRICS]:
        parts = [m[name] for m in metric_parts]
        data[name] = np.concatenate(parts) if n_combos > 1 else parts[0]
    data["gpus"] = np.tile(gpus, n_combos) if n_combos > 1 else gpus
    data["throughput_per_gpu_tok_s"] = data["throughput_tok_s"] / data["gpus"]  # a layout's worth of each GPU
    for name in COUNT_METRICS:  # counts (parameters, bytes) are whole numbers in every output
        if name in data and np.isfinite(data[name]).all():
            data[name] = np.rint(data[name]).astype(np.int64)
    table = pd.DataFrame(data, copy=False)  # every column is a fresh array: no copy needed
    table.attrs["dropped"] = {"count": (math.prod(shape) - n_kept) * n_combos,
                              "of": math.prod(shape) * n_combos, "reasons": reasons}
    return table
