"""What-if sweeps: a grid of workloads and hyperparameters, evaluated in one vectorized call.

Each distinct model of the grid (one combination of the hyperparameter keys) is built once,
by the same loading and checks as :func:`perfmodel.prediction.predict` with those values as
overrides; its numbers and the numeric workload keys are fed as numpy arrays to the same
lambdified expressions a single prediction uses (one call per model structure); categorical
keys (gpu, engine, dtype, kv_dtype) loop. The result is a pandas DataFrame with one row per
valid combination.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np
from pydantic import ValidationError

from perfmodel.errors import InputError
from perfmodel.graph import model_values
from perfmodel.prediction import (
    COUNT_METRICS, DTYPE_BYTES, METRICS, PHASES, Workload, check_choice, check_count, check_model, check_name,
    check_overrides, compile_model, layout_gpus, numeric_values, structure_key,
)
from perfmodel.profile import DEFAULT_ENGINE, load_profile
from perfmodel.specs.hardware import load_gpu
from perfmodel.specs.layout import Layout, layout_holds
from perfmodel.specs.families import EXPERT_KNOBS, KNOBS
from perfmodel.specs.model import MAX_INT, ModelSpec, load_model
from perfmodel.specs.zoo import config_field

#: Numeric grid keys → the symbol they set: the workload's, then the friendly names of the
#: model's hyperparameters (:data:`perfmodel.specs.families.KNOBS`) that have a symbol.
GRID_SYMBOLS = {
    "batch": "B", "input_len": "S", "output_len": "O", "context": "L", "tp": "tp", "ep": "ep",
    "pp": "pp", "skew": "sigma", **{k.name: k.symbol for k in KNOBS.values() if k.symbol},
}
#: Numeric grid keys of the workload; the others are the model's hyperparameters.
WORKLOAD_KEYS = ("batch", "input_len", "output_len", "context", "tp", "ep", "pp", "skew")
MODEL_KEYS = tuple(k for k in GRID_SYMBOLS if k not in WORKLOAD_KEYS)
CATEGORICAL = ("gpu", "engine", "dtype", "kv_dtype")
#: Workload fields a sweep takes as fixed keyword arguments.
FIXED_KEYS = ("batch", "input_len", "output_len", "context", "tp", "ep", "pp", "dtype", "kv_dtype", "skew")
#: Largest grid (combinations, before invalid ones are dropped) a sweep builds by default: a
#: row takes about 200 bytes, so 10^7 rows are about 2 GB.
MAX_POINTS = 10_000_000
_INTEGER_KEYS = set(GRID_SYMBOLS) - {"skew"}
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
        if key not in GRID_SYMBOLS and key not in CATEGORICAL:
            raise InputError(f"unknown grid key '{key}' (known: {_known_keys()})")
        if key in grid:
            raise InputError(f"--grid {key} is given twice: give all its values once ({key}=V1,V2,...)")
        values: list[Any] = [v.strip() for v in raw.split(",") if v.strip()]
        if key in GRID_SYMBOLS:
            try:
                values = [float(v) for v in values]
            except ValueError:
                raise InputError(f"bad --grid values for '{key}': {raw}") from None
        grid[key] = values
    return grid


#: Grid keys that only mean something for a model with routed experts.
_MOE_KEYS = tuple(k for k in EXPERT_KNOBS if k in GRID_SYMBOLS)


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


def _variant(model: str | ModelSpec, spec: ModelSpec, overrides: dict[str, Any],
             point: dict[str, int]) -> ModelSpec:
    """The model at one grid point: the model ``predict`` loads, by the same function, with
    the point as overrides. A ModelSpec, which has no config, gets the point's values in its
    fields, validated."""
    if isinstance(model, str):
        return load_model(model, {**overrides, **point})
    data = spec.model_dump()
    for key, value in point.items():
        *path, last = _SPEC_FIELDS[key]
        target = data
        for part in path:
            target = target[part]
        target[last] = value
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InputError(f"invalid model: {loc + ': ' if loc else ''}{err['msg'].removeprefix('Value error, ')}") from None


def _models(model: str | ModelSpec, spec: ModelSpec, overrides: dict[str, Any],
            names: list[str], numeric: dict[str, np.ndarray]) -> _Models:
    """Build and check each distinct model of the grid once (see :func:`_variant`)."""
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
    columns = [[int(v) for v in numeric[k]] for k in keys]
    for flat, values in enumerate(itertools.product(*columns)):
        point = dict(zip(keys, values))
        try:
            variant = _variant(model, spec, overrides, point)
        except InputError as exc:
            if len(reasons) < 3:
                reasons.append(f"{', '.join(f'{k}={v}' for k, v in point.items())}: {exc}")
            continue
        key = structure_key(variant)
        if key not in structures:
            structures[key] = len(specs)
            specs.append(variant)
        group[flat] = structures[key]
        rows[flat] = list(model_values(variant).values())
    arrays = {name: rows[:, i] for i, name in enumerate(symbols)}
    values = {name: (float(a[0]) if np.all(a == a[0]) else a.reshape(mesh))
              for name, a in arrays.items()}
    return _Models(group.reshape(mesh), specs, values, reasons)


def _layout_reason(model: str | ModelSpec, spec: ModelSpec, overrides: dict[str, Any],
                   workload: Workload, numeric: dict[str, np.ndarray], index: tuple) -> str:
    """Why the layout at one grid point does not suit that point's model (predict's message)."""
    point = {k: int(v[i]) for (k, v), i in zip(numeric.items(), index) if k in _INTEGER_KEYS}
    variant = _variant(model, spec, overrides, {k: v for k, v in point.items() if k in MODEL_KEYS})
    layout = Layout(*(point.get(k, getattr(workload, k)) for k in ("tp", "ep", "pp")))
    shown = ", ".join(f"{k}={v}" for k, v in point.items())
    try:
        layout.check(variant)
    except InputError as exc:
        return f"{shown + ': ' if shown else ''}{exc}"
    return f"{shown}: the layout does not suit the model"  # pragma: no cover - rules agree


def sweep(model: str | ModelSpec, grid: dict[str, Any], *, gpu: str | None = None,
          engine: str | None = None, phase: str = "request",
          overrides: list[str] | dict[str, Any] | None = None, max_points: int = MAX_POINTS,
          **fixed: Any):
    """Evaluate every combination of ``grid`` (other workload fields from ``fixed``).

    ``grid`` maps keys (:data:`GRID_SYMBOLS` and :data:`CATEGORICAL`) to lists of values;
    ``fixed`` takes the workload fields of :data:`FIXED_KEYS`; ``gpu`` and ``engine`` default
    to h200-sxm and roofline. A key may be given once: swept, fixed or set, not two of them.
    A grid of more than ``max_points`` combinations is refused before it is built.

    Returns a pandas DataFrame: one column per grid key, then the metrics of
    :data:`perfmodel.prediction.METRICS` (seconds, bytes, tokens/s), ``fits_in_memory`` and
    ``gpus`` (GPUs of the tp/ep/pp layout). Each row equals
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

    phase = check_choice("phase", phase, PHASES)  # type: ignore[assignment]
    model = check_model(model)
    overrides = check_overrides(overrides)
    if isinstance(model, ModelSpec) and overrides:
        raise InputError("overrides apply to a zoo name or a config.json, not to a ModelSpec")
    given = {"gpu": gpu, "engine": engine}
    gpu = check_name("gpu", gpu) if gpu is not None else "h200-sxm"
    engine = check_name("engine", engine) if engine is not None else DEFAULT_ENGINE
    max_points = check_count("max_points", max_points)
    unknown = [k for k in fixed if k not in FIXED_KEYS]
    if unknown:
        raise InputError(f"unknown sweep argument '{unknown[0]}' (known: gpu, engine, phase, "
                         f"overrides, max_points, {', '.join(FIXED_KEYS)})")
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
    workload = Workload(**fixed)
    numeric = {k: v for k, v in axes_values.items() if k in GRID_SYMBOLS}
    categorical = {k: v for k, v in axes_values.items() if k in CATEGORICAL}
    for key, values in numeric.items():
        _check_numeric(key, values)  # type: ignore[arg-type]
    for key, cat_values in categorical.items():
        _check_categorical(key, cat_values)  # type: ignore[arg-type]
    spec = model if isinstance(model, ModelSpec) else load_model(model, overrides)
    _check_duplicates(spec, grid, fixed, overrides, given)
    _check_model(spec, numeric)  # type: ignore[arg-type]
    if spec.moe is None and workload.ep != 1:
        raise InputError("ep > 1 needs a model with experts")
    names = list(numeric)
    shape = tuple(len(v) for v in numeric.values())
    axes = dict(zip(names, np.meshgrid(*numeric.values(), indexing="ij", sparse=True))) if names else {}
    models = _models(model, spec, overrides, names, numeric)  # type: ignore[arg-type]
    degrees = {k: axes.get(k, getattr(workload, k)) for k in ("tp", "ep", "pp")}
    built, suits = models.group >= 0, False
    for index, variant in enumerate(models.specs):  # the layout rules apply by model structure
        suits = suits | ((models.group == index) & layout_holds(variant, {**models.values, **degrees}))
    valid = np.broadcast_to(built & suits, shape)
    reasons = list(models.reasons)
    unsuited = np.broadcast_to(built & ~suits, shape)
    if unsuited.any():
        reasons.append(_layout_reason(model, spec, overrides, workload, numeric,
                                      np.unravel_index(int(np.argmax(unsuited)), shape)))
    if not valid.any():
        raise InputError("no valid combination in the grid: " + "; ".join(reasons))
    keep_all = bool(valid.all())
    n_kept = int(valid.sum())

    def flatten(array: Any) -> np.ndarray:
        """One value per valid combination, in C order of the grid (always a new array)."""
        full = np.broadcast_to(array, shape)
        return full.flatten() if keep_all else full[valid]

    columns = {n: flatten(a.astype(np.int64) if n in _INTEGER_KEYS else a) for n, a in axes.items()}
    gpus = flatten(np.asarray(layout_gpus(*(axes.get(k, getattr(workload, k)) for k in ("tp", "ep", "pp"))),
                              dtype=np.int64))
    combos = list(itertools.product(*categorical.values()))
    setups = []  # every combination checked before any is evaluated
    for combo in combos:
        cat = dict(zip(categorical, combo))
        gpu_spec = load_gpu(cat.get("gpu", gpu))
        profile = load_profile(cat.get("engine", engine), gpu_spec.name)
        point_workload = replace(workload, **{k: cat[k] for k in ("dtype", "kv_dtype") if k in cat})
        setups.append((gpu_spec, profile, point_workload,
                       numeric_values(models.specs[0], gpu_spec, profile, point_workload)))
    quiet = not keep_all or len(models.specs) > 1
    metric_parts: list[dict[str, np.ndarray]] = []
    for gpu_spec, profile, point_workload, base_values in setups:
        merged: dict[str, Any] = {}
        for index, variant in enumerate(models.specs):
            compiled = compile_model(variant, phase, profile, with_ops=False)
            values = {**base_values, **models.values}
            if "context" not in numeric and "input_len" in numeric and phase == "decode" \
                    and point_workload.context is None:
                values["L"] = axes["input_len"]
            for key, axis in axes.items():
                if key in WORKLOAD_KEYS:
                    values[GRID_SYMBOLS[key]] = axis
            # the open mesh evaluates invalid combinations (and other structures' models) too,
            # dropped below: no warnings for them
            with np.errstate(divide="ignore", invalid="ignore") if quiet else contextlib.nullcontext():
                out = compiled.fn(*[values[a] for a in compiled.args])
            outputs = {name: value for name, value in zip(compiled.expressions, out) if name in METRICS}
            if len(models.specs) == 1:
                merged = outputs
            else:
                mine = models.group == index
                merged = {name: np.where(mine, value, merged.get(name, np.nan))
                          for name, value in outputs.items()}
        metrics = {name: flatten(np.asarray(value, dtype=float)) for name, value in merged.items()}
        capacity = gpu_spec.hbm_capacity_bytes * profile.options.memory_usable_fraction
        metrics["fits_in_memory"] = metrics["memory_bytes"] <= capacity
        metric_parts.append(metrics)
    n_combos = len(combos)
    data: dict[str, Any] = {}
    for key, column in columns.items():
        data[key] = np.tile(column, n_combos) if n_combos > 1 else column
    for i, key in enumerate(categorical):
        data[key] = np.repeat(np.asarray([c[i] for c in combos], dtype=object), n_kept)
    for name in [*[m for m in METRICS if m in metric_parts[0]], "fits_in_memory"]:
        parts = [m[name] for m in metric_parts]
        data[name] = np.concatenate(parts) if n_combos > 1 else parts[0]
    data["gpus"] = np.tile(gpus, n_combos) if n_combos > 1 else gpus
    for name in COUNT_METRICS:  # counts (parameters, bytes) are whole numbers in every output
        if name in data and np.isfinite(data[name]).all():
            data[name] = np.rint(data[name]).astype(np.int64)
    table = pd.DataFrame(data, copy=False)  # every column is a fresh array: no copy needed
    table.attrs["dropped"] = {"count": (math.prod(shape) - n_kept) * n_combos,
                              "of": math.prod(shape) * n_combos, "reasons": reasons}
    return table
