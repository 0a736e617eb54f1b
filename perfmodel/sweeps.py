"""What-if sweeps: a grid of workloads and hyperparameters, evaluated in one vectorized call.

Numeric grid keys become numpy arrays fed to the same lambdified expressions a single
prediction uses; categorical keys (gpu, engine, dtype, kv_dtype) loop. The result is a pandas
DataFrame with one row per valid combination.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Iterable

import numpy as np

from perfmodel.errors import InputError
from perfmodel.prediction import METRICS, Workload, compile_model, numeric_values, structure_key
from perfmodel.profile import load_profile
from perfmodel.specs.hardware import load_gpu
from perfmodel.specs.model import MAX_INT, ModelSpec, load_model
from perfmodel.specs.zoo import load_hf_config, parse_override

#: Numeric grid keys → the symbol they set.
GRID_SYMBOLS = {
    "batch": "B", "input_len": "S", "output_len": "O", "context": "L", "tp": "tp", "ep": "ep",
    "pp": "pp", "skew": "sigma", "num_experts": "E", "top_k": "k", "moe_intermediate_size": "I_e",
    "ffn": "I_e", "hidden_size": "H", "num_layers": "N_layers", "num_heads": "n_h",
    "num_kv_heads": "n_kv", "head_dim": "d_h", "vocab_size": "V", "dense_intermediate_size": "I_d",
    "shared_expert_intermediate_size": "I_sh", "num_shared_experts": "n_sh", "sliding_window": "W",
}
CATEGORICAL = ("gpu", "engine", "dtype", "kv_dtype")
_INTEGER_KEYS = set(GRID_SYMBOLS) - {"skew"}


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["batch=1,16,64", "dtype=bf16,fp8"]`` → ``{"batch": [1, 16, 64], "dtype": [...]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not raw.strip():
            raise InputError(f"bad --grid '{item}': expected KEY=V1,V2,...")
        if key not in GRID_SYMBOLS and key not in CATEGORICAL:
            raise InputError(f"unknown grid key '{key}' (known: {', '.join(sorted([*GRID_SYMBOLS, *CATEGORICAL]))})")
        values: list[Any] = [v.strip() for v in raw.split(",") if v.strip()]
        if key in GRID_SYMBOLS:
            try:
                values = [float(v) for v in values]
            except ValueError:
                raise InputError(f"bad --grid values for '{key}': {raw}") from None
        grid[key] = values
    return grid


#: Grid keys that only mean something for a model with routed experts.
_MOE_KEYS = ("num_experts", "top_k", "moe_intermediate_size", "ffn", "num_shared_experts",
             "shared_expert_intermediate_size")


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


def _check_model(spec: ModelSpec, numeric: dict[str, np.ndarray]) -> None:
    """Grid keys the model has nothing to apply to."""
    if spec.moe is None:
        moe_keys = [k for k in _MOE_KEYS if k in numeric]
        if moe_keys or ("ep" in numeric and np.any(numeric["ep"] != 1)):
            raise InputError(f"grid key '{(moe_keys or ['ep'])[0]}' needs a model with experts")
    if {"num_shared_experts", "shared_expert_intermediate_size"} & set(numeric) and not (
            spec.moe and spec.moe.n_shared):
        raise InputError("this model has no shared experts to sweep (add them with --set first)")


def _derived_axes(model: str | ModelSpec, overrides: list[str] | dict[str, Any] | None,
                  spec: ModelSpec, axes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Symbols that ``--set KEY=VALUE`` of a swept key changes besides the key's own, so that a
    grid point predicts what ``predict(..., overrides=point)`` predicts:

    - the head width, H // n_heads, when the config leaves head_dim to its default;
    - the KV heads, equal to the heads, when the config leaves num_key_value_heads out;
    - the dense and windowed layer counts, which follow num_layers (per architecture).

    A :class:`ModelSpec` (no config to consult) is swept as its symbols.
    """
    if not isinstance(model, str):
        return {}
    config = load_hf_config(model, overrides)
    derived: dict[str, np.ndarray] = {}
    heads = axes.get("num_heads", spec.attention.n_heads)
    if spec.attention.kind == "gqa" and config.get("head_dim") is None and "head_dim" not in axes \
            and ("hidden_size" in axes or "num_heads" in axes):
        derived["d_h"] = np.floor_divide(axes.get("hidden_size", spec.hidden), heads)
    if config.get("num_key_value_heads") is None and "num_heads" in axes and "num_kv_heads" not in axes:
        derived["n_kv"] = axes["num_heads"]
    if "num_layers" in axes:
        layers = axes["num_layers"]
        dense, window = np.empty_like(layers), np.empty_like(layers)
        base = list(overrides.items()) if isinstance(overrides, dict) else [
            parse_override(o) for o in overrides or []]
        for index, n in np.ndenumerate(layers):
            variant = load_model(model, dict([*base, ("num_layers", int(n))]))
            if structure_key(variant) != structure_key(spec):
                raise InputError(f"num_layers={int(n)} changes which kinds of layers {spec.name} "
                                 "has (dense, MoE, windowed): predict it with --set instead")
            dense[index], window[index] = variant.n_dense_layers, variant.n_window_layers
        derived["N_dense"], derived["N_window"] = dense, window
    return derived


def _valid_combinations(spec: ModelSpec, axes: dict[str, np.ndarray], fixed: dict[str, Any],
                        shape: tuple[int, ...]) -> np.ndarray:
    """Which combinations describe a valid model and parallel layout (see :func:`sweep`).

    ``axes`` are the open-mesh grid axes; the result has the full grid ``shape``.
    """
    def axis(key: str, default: float) -> np.ndarray | float:
        return axes[key] if key in axes else default

    layers = axis("num_layers", spec.n_layers)
    valid = (layers % axis("pp", fixed.get("pp", 1)) == 0) & (layers >= axis(
        "N_dense", spec.n_dense_layers)) & (layers >= axis("N_window", spec.n_window_layers))
    if "num_heads" in axes or "num_kv_heads" in axes:
        valid = valid & (axis("num_heads", spec.attention.n_heads)
                         % axis("num_kv_heads", spec.attention.n_kv_heads) == 0)
    if spec.moe is not None:
        experts = axis("num_experts", spec.moe.n_experts)
        valid = valid & (axis("top_k", spec.moe.top_k) <= experts)
        valid = valid & (experts % axis("ep", fixed.get("ep", 1)) == 0)
    return np.broadcast_to(valid, shape)


def sweep(model: str | ModelSpec, grid: dict[str, list[Any]], *, gpu: str = "h200-sxm",
          engine: str = "roofline", phase: str = "request", overrides: list[str] | None = None,
          **fixed: Any):
    """Evaluate every combination of ``grid`` (other workload fields from ``fixed``).

    Returns a pandas DataFrame: one column per grid key, then the metrics of
    :data:`perfmodel.prediction.METRICS` and ``fits_in_memory``. Combinations that describe no
    valid model or layout are dropped: top_k > num_experts, ep not dividing num_experts, pp
    not dividing num_layers, num_layers below the model's dense or windowed layer count,
    num_heads not a multiple of num_kv_heads. A grid with no valid combination is an error.
    A swept key changes what ``--set`` of it would change (see :func:`_derived_axes`), so each
    row equals :func:`perfmodel.prediction.predict` with the row's values as overrides.

    The numeric keys are fed to the compiled function as an open (sparse) mesh: each
    intermediate is computed over the grid axes it depends on only, and just the outputs are
    expanded to one value per combination.
    """
    import pandas as pd

    if phase not in ("request", "prefill", "decode"):
        raise InputError(f"unknown phase '{phase}' (request, prefill or decode)")
    unknown = [k for k in grid if k not in GRID_SYMBOLS and k not in CATEGORICAL]
    if unknown:
        raise InputError(f"unknown grid key '{unknown[0]}' (known: {', '.join(sorted([*GRID_SYMBOLS, *CATEGORICAL]))})")
    spec = model if isinstance(model, ModelSpec) else load_model(model, overrides)
    try:
        numeric = {k: np.asarray(v, dtype=float).ravel() for k, v in grid.items() if k in GRID_SYMBOLS}
    except (TypeError, ValueError):
        raise InputError("numeric grid values must be numbers") from None
    categorical = {k: list(v) for k, v in grid.items() if k in CATEGORICAL}
    for key, values in numeric.items():
        _check_numeric(key, values)
    for key, cat_values in categorical.items():
        if not cat_values:
            raise InputError(f"grid key '{key}' has no values")
    _check_model(spec, numeric)
    names = list(numeric)
    shape = tuple(len(v) for v in numeric.values())
    axes = np.meshgrid(*numeric.values(), indexing="ij", sparse=True) if names else []
    derived = _derived_axes(model, overrides, spec, dict(zip(names, axes)))
    valid = _valid_combinations(spec, {**dict(zip(names, axes)), **derived}, fixed, shape)
    if not valid.any():
        raise InputError("no valid combination in the grid (each has top_k > num_experts, or "
                         "ep/pp/num_kv_heads not dividing num_experts/num_layers/num_heads)")
    keep_all = bool(valid.all())

    def flatten(array: np.ndarray) -> np.ndarray:
        """One value per valid combination, in C order of the grid (always a new array)."""
        full = np.broadcast_to(array, shape)
        return full.flatten() if keep_all else full[valid]

    columns = {n: flatten(a.astype(np.int64) if n in _INTEGER_KEYS else a)
               for n, a in zip(names, axes)}
    n_rows = int(valid.sum())
    metric_parts: list[dict[str, np.ndarray]] = []
    combos = list(itertools.product(*categorical.values()))
    setups = []  # every combination checked before any is evaluated
    for combo in combos:
        cat = dict(zip(categorical, combo))
        gpu_spec = load_gpu(cat.get("gpu", gpu))
        profile = load_profile(cat.get("engine", engine), gpu_spec.name)
        workload = Workload(**{**fixed, **{k: cat[k] for k in ("dtype", "kv_dtype") if k in cat}})
        workload.check(spec)
        setups.append((gpu_spec, profile, workload, numeric_values(spec, gpu_spec, profile, workload)))
    for gpu_spec, profile, workload, values in setups:
        compiled = compile_model(spec, phase, profile, with_ops=False)
        if "context" not in numeric and "input_len" in numeric and phase == "decode" and workload.context is None:
            values["L"] = axes[names.index("input_len")]
        for key, axis in zip(names, axes):
            values[GRID_SYMBOLS[key]] = axis
        values.update(derived)
        # the open mesh evaluates invalid combinations too (dropped below): no warnings for them
        with np.errstate(divide="ignore", invalid="ignore") if not keep_all else contextlib.nullcontext():
            out = compiled.fn(*[values[a] for a in compiled.args])
        metrics = {name: flatten(np.asarray(value, dtype=float))
                   for name, value in zip(compiled.expressions, out) if name in METRICS}
        capacity = gpu_spec.hbm_capacity_bytes * profile.options.memory_usable_fraction
        metrics["fits_in_memory"] = metrics["memory_bytes"] <= capacity
        metric_parts.append(metrics)
    n_combos = len(combos)
    data: dict[str, Any] = {}
    for key, column in columns.items():
        data[key] = np.tile(column, n_combos) if n_combos > 1 else column
    for i, key in enumerate(categorical):
        data[key] = np.repeat(np.asarray([c[i] for c in combos], dtype=object), n_rows)
    for name in [*[m for m in METRICS if m in metric_parts[0]], "fits_in_memory"]:
        parts = [m[name] for m in metric_parts]
        data[name] = np.concatenate(parts) if n_combos > 1 else parts[0]
    return pd.DataFrame(data, copy=False)  # every column is a fresh array: no copy needed
