"""Printing an op's formula: symbolic, after the phase substitutions, with the model's numbers,
and its value at one workload."""

from __future__ import annotations

from perfmodel.profile import DEFAULT_ENGINE

import sympy as sp

from perfmodel import symbols as sym
from perfmodel.errors import InputError
from perfmodel.graph import build_graph, model_values
from perfmodel.phases import decode_substitutions, graph_batch, prefill_substitutions
from perfmodel.roofline import op_time
from perfmodel.specs.model import load_model
from perfmodel.symbols import B, L, S, T, b_a, b_e, b_kv, b_w, dp, ep, pp, sigma, tp, x_ep, z_busy

#: The tokens of the CUDA graph a pass replays, where the engine pads the pass to a captured size.
GRAPH_TOKENS = sp.Symbol("T_g", positive=True)

#: The pseudo-op of ``perfmodel formula --op launch``: the host's launch floor of an eager prefill
#: (:func:`perfmodel.prediction.launch_floor`), a time per pass rather than per layer.
LAUNCH = "launch"
#: A formula is shown for one data-parallel rank with the experts' load even over their GPUs (the
#: layout's own terms, :mod:`perfmodel.specs.layout`, are predict's).
ONE_RANK = {dp: 1, z_busy: 0, x_ep: 0}

#: What each quantity's value is counted in.
UNITS = {"flops": "FLOP", "bytes": "bytes", "weight_bytes": "bytes", "act_bytes": "bytes",
         "kv_bytes": "bytes", "comm": "bytes", "params": "parameters", "time": "s"}


def _parts(model_name: str, op_name: str, quantity: str, phase: str, overrides: list[str], *,
           batch: int = 1, input_len: int = 128, context: int | None = None,
           gpu: str = "h200-sxm", engine: str = DEFAULT_ENGINE, quant: str | None = None,
           moe_impl: str = "fused") -> dict:
    """An op's formula as sympy: symbolic, after the phase's substitutions, with the model's
    numbers, and its value at B, S (prefill) or L (decode; default S); a time on ``gpu``
    under ``engine``. ``quant``: the linear layers' quantization scheme (default: the one the
    model's checkpoint stores, as :func:`perfmodel.prediction.predict` takes it; ``none``:
    unquantized); ``moe_impl``: the routed experts' implementation. For ``op_name == "list"``:
    the ops of the pass."""
    from perfmodel.prediction import DTYPE_BYTES, Workload, check_context, graph_options, hardware_values
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu

    if phase not in ("prefill", "decode"):
        raise InputError("--phase must be prefill or decode for a formula")
    check_context(phase, context)
    model = load_model(model_name, overrides)
    w = Workload(batch=batch, input_len=input_len, context=context, quant=quant,
                 moe_impl=moe_impl).stored_as(model)
    scheme = w.scheme
    gpu_spec = load_gpu(gpu)
    profile = load_profile(engine, gpu_spec.name)
    # the ops as the engine runs them, as predict builds them (its expert-row tiles, MLA's path)
    graph = build_graph(model, decode=phase == "decode", options=graph_options(profile, w, model, gpu_spec.name))
    ops = {op.name: (count, op) for count, op in graph.all_ops()}
    if op_name == "list":
        return {"model": model, "phase": phase, "ops": ops, "numbers": model_values(model)}
    if op_name == LAUNCH:
        return _launch_parts(model, graph, quantity, phase, w, gpu_spec, profile, engine)
    if op_name not in ops:
        raise InputError(f"unknown op '{op_name}' for {model.name} (known: {', '.join(ops)})")
    count, op = ops[op_name]
    subs = prefill_substitutions() if phase == "prefill" else decode_substitutions()
    at = {B: w.batch, S: w.input_len} if phase == "prefill" else {
        B: w.batch, L: w.context if w.context is not None else w.input_len}
    if profile.pads_cudagraphs:  # the pass runs the tokens of the CUDA graph it replays
        tokens = subs[T].subs(at)
        padded = graph_batch(subs[T], float(profile.options.cudagraph_max_tokens or 0)).subs(at)
        if padded != tokens:
            subs = {**subs, T: GRAPH_TOKENS}
            at[GRAPH_TOKENS] = int(padded)
    expr = (op_time(op, subs).total if quantity == "time" else op.quantity(quantity)).subs(ONE_RANK)
    phased = expr.subs(subs)
    numbers = {**model_values(model), tp: 1, ep: 1, pp: 1, sigma: 0,
               b_w: 2, b_e: 2, b_a: 2, b_kv: 2, **scheme.values(DTYPE_BYTES["bf16"])}
    hardware = hardware_values(gpu_spec, profile, "bf16", scheme.name) if quantity == "time" else {}
    numbers.update({sym: v for sym, v in hardware.items() if sym in numbers})  # a profile's fitted n_dq
    concrete = _tidy(phased.subs(numbers), quantity)
    where = ", ".join(f"{k}={v}" for k, v in at.items())
    values = dict(at)
    if quantity == "time":
        values.update(hardware)
        where += f" on {gpu_spec.name} ({engine})"
    value = concrete.subs(values)
    return {"model": model, "op": op, "layers": count, "numbers": numbers, "expr": expr, "subs": subs,
            "phased": _tidy(phased, quantity), "concrete": concrete, "at": at, "where": where,
            "value": float(value) if not value.free_symbols else None, "scheme": scheme.name,
            "moe_impl": w.moe_impl}


def _tidy(expr: sp.Expr, quantity: str) -> sp.Expr:
    """An expression as shown: simplified (sympy's ``simplify``) for a count; a time, whose max(),
    min() and step functions ``simplify`` makes longer in seconds (e.g. 350 → 572 operations in 6 s
    for a fused MoE's prefill), only with its common factors pulled out and its powers merged."""
    return sp.powsimp(sp.factor_terms(expr)) if quantity == "time" else sp.simplify(expr)


def _launch_parts(model, graph, quantity: str, phase: str, w, gpu_spec, profile, engine: str) -> dict:
    """:func:`_parts` for ``--op launch``: the launch floor of the prefill as ``predict`` builds it
    (chunked into engine steps where the profile chunks prefills), symbolic, with the model's
    numbers, and its value with the profile's host times (0 where the prefill fits a captured
    CUDA graph, or the engine launches no prefill)."""
    from perfmodel.prediction import hardware_values, launch_floor, prefill_chunking, split_host

    if phase != "prefill" or quantity != "time":
        raise InputError(f"--op {LAUNCH} is the host's time to launch a prefill: give --phase prefill "
                         "--quantity time")
    if not profile.options.prefill_eager:
        raise InputError(f"engine '{engine}' has no host launch floor for a prefill (its option "
                         f"prefill_eager is off): --op {LAUNCH} has no formula there")
    steps, chunk = prefill_chunking(profile.options)
    expr = launch_floor(graph, {T: T, B: B}, steps, chunk)
    subs = prefill_substitutions()
    phased = launch_floor(graph, subs, steps, chunk)
    numbers = {**model_values(model), tp: 1, ep: 1, pp: 1, **ONE_RANK, sigma: 0}
    concrete = phased.subs(numbers)
    at = {B: w.batch, S: w.input_len}
    values = {**at, **hardware_values(gpu_spec, profile, "bf16", w.scheme.name)}
    value = concrete.subs(values)
    split = sp.sympify(split_host(graph, subs)).subs(numbers)
    split_value = split.subs(values) if split != 0 else None
    return {"model": model, "op": None, "layers": 1, "numbers": numbers, "expr": expr, "subs": subs,
            "split": split if split != 0 else None,
            "split_value": float(split_value) if split_value is not None and not split_value.free_symbols else None,
            "phased": phased, "concrete": concrete, "at": at,
            "where": ", ".join(f"{k}={v}" for k, v in at.items()) + f" on {gpu_spec.name} ({engine}, "
                     "its host times at the profile's reference host)",
            "value": float(value) if not value.free_symbols else None, "scheme": w.scheme.name,
            "moe_impl": w.moe_impl, "noise": profile.latency.launch_noise}


def _split_lines(parts: dict, show) -> list[str]:
    """``--op launch``'s lines on what a serving step holding prompt tokens beside decodes adds
    on the host (:func:`perfmodel.prediction.split_host`; none for a model that pays none)."""
    if parts.get("split") is None:
        return []
    value = parts["split_value"]
    return ["", "a serving step that holds prompt tokens beside decodes adds (its attention run as two "
            "paths, t_mla_split per layer):", show(parts["split"]),
            "= " + (f"{value:.6g} s" if value is not None else "(not a number)")]


def _noise_values(noise) -> dict:
    """The launch noise's parameters by symbol, and the 10th and 90th percentile of a launch's
    factor (:func:`perfmodel.host_noise.factor_range`)."""
    from perfmodel.host_noise import factor_range, parameters

    p10, p90 = factor_range(noise)
    return {"params": parameters(noise), "p10": p10, "p90": p90}


def _noise_lines(noise, show) -> list[str]:
    """``--op launch``'s lines on how a launch varies within a serving run (none without noise)."""
    if noise is None:
        return []
    from perfmodel.host_noise import COVARIANCE

    v = _noise_values(noise)
    p = v["params"]
    return [
        "",
        "in a serving run each launch takes this × e^z, z = z_w + z_f(t) + z_s(t) (perfmodel.host_noise: "
        "z_w drawn per launch, z_f and z_s drifting); two launches Δt apart have Cov(z, z') =",
        show(COVARIANCE),
        f"with σ_w = {p[sym.sigma_w]:g}, σ_f = {p[sym.sigma_f]:g} (τ_f = {p[sym.tau_f]:g} s), "
        f"σ_s = {p[sym.sigma_s]:g} (τ_s = {p[sym.tau_s]:g} s): a launch's factor "
        f"{v['p10']:.2f}–{v['p90']:.2f} (10th–90th percentile)",
    ]


def _noise_data(noise) -> dict | None:
    """``--op launch --json``'s ``serving_noise``: the covariance of two launches' log factors,
    the parameters and a launch's 10th–90th percentile factor (None without noise)."""
    if noise is None:
        return None
    from perfmodel.host_noise import COVARIANCE

    v = _noise_values(noise)
    return {"covariance": str(COVARIANCE), "values": {str(k): x for k, x in v["params"].items()},
            "factor_p10": round(v["p10"], 4), "factor_p90": round(v["p90"], 4)}


def _stored(parts: dict) -> str:
    """How the formula's layers are stored and run, beside bf16: its quantization scheme and
    an unfused MoE, where they apply."""
    out = f", quant={parts['scheme']}" if parts["scheme"] != "none" else ""
    return out + (f", moe_impl={parts['moe_impl']}" if parts["moe_impl"] != "fused" else "")


def op_formula(model_name: str, op_name: str, quantity: str, phase: str, latex: bool,
               overrides: list[str], **workload) -> list[str]:
    """Lines to print for ``perfmodel formula`` (``workload``: see :func:`op_formula_data`)."""
    parts = _parts(model_name, op_name, quantity, phase, overrides, **workload)
    if op_name == "list":
        return [f"{name:24s} {op.op_class}" for name, (_, op) in parts["ops"].items()]
    show = sp.latex if latex else sp.pretty
    op, value = parts["op"], parts["value"]
    if op_name == LAUNCH:
        return [
            f"{parts['model'].name} · {LAUNCH} · the host's time to launch a prefill, per pass "
            "(θ: Heaviside, 0 where each step fits the largest captured CUDA graph M_graph)",
            "",
            "symbolic (T tokens of B sequences; N_uncompiled ops run uncompiled, t_moe_host a quantized MoE "
            "kernel's launches from Python, syncs the host's waits):",
            show(parts["expr"]),
            "",
            f"{phase}: " + ", ".join(f"{k} = {v}" for k, v in parts["subs"].items()),
            "",
            "with this model's numbers (TP=EP=PP=1):",
            show(parts["concrete"]),
            "",
            f"at {parts['where']}: " + (f"{value:.6g} s" if value is not None else "(not a number)"),
            *_split_lines(parts, show),
            *_noise_lines(parts["noise"], show),
        ]
    return [
        f"{parts['model'].name} · {op_name} · {quantity} per layer ({op.op_class}); layers: {parts['layers']}",
        "",
        "symbolic (T tokens, P pairs and C cached tokens per sequence):",
        show(parts["expr"]),
        "",
        f"{phase}: " + ", ".join(f"{k} = {v}" for k, v in parts["subs"].items()),
        *([f"  T_g = {parts['at'][GRAPH_TOKENS]}: the tokens of the CUDA graph the engine replays "
           f"({'B·S' if phase == 'prefill' else 'B'} padded to the next captured size)"]
          if GRAPH_TOKENS in parts["at"] else []),
        show(parts["phased"]),
        "",
        f"with this model's numbers (bf16{_stored(parts)}, TP=EP=PP=1, uniform routing):",
        show(parts["concrete"]),
        "",
        f"at {parts['where']}: " + (f"{value:.6g} {UNITS[quantity]} per layer" if value is not None
                                    else "(not a number)"),
    ]


def op_formula_data(model_name: str, op_name: str, quantity: str, phase: str,
                    overrides: list[str], latex: bool = False, **workload) -> dict:
    """``perfmodel formula --json``: the expressions as strings (sympy syntax; with ``latex``,
    also as LaTeX under ``latex``) and the value per layer at the workload (``batch``,
    ``input_len``, ``context``; a time on ``gpu`` under ``engine``), in :data:`UNITS`. For
    ``op_name == "list"``: the ops with their class and layer count."""
    parts = _parts(model_name, op_name, quantity, phase, overrides, **workload)
    data = _formula_data(parts, op_name, quantity, phase)
    if latex and op_name != "list":
        data["latex"] = {"symbolic": sp.latex(parts["expr"]), "phase_expression": sp.latex(parts["phased"]),
                         "with_model_numbers": sp.latex(parts["concrete"])}
    return data


def _formula_data(parts: dict, op_name: str, quantity: str, phase: str) -> dict:
    """:func:`op_formula_data` of ``parts`` (:func:`_parts`), without its LaTeX."""
    if op_name == LAUNCH:
        return {"model": parts["model"].name, "op": LAUNCH, "quantity": quantity, "unit": "s",
                "phase": phase, "per": "pass", "symbolic": str(parts["expr"]),
                "substitutions": {str(k): str(v) for k, v in parts["subs"].items()},
                "phase_expression": str(parts["phased"]), "with_model_numbers": str(parts["concrete"]),
                "at": {str(k): int(v) for k, v in parts["at"].items()}, "value": parts["value"],
                "mixed_step_split": (None if parts.get("split") is None else
                                     {"expression": str(parts["split"]), "value_s": parts["split_value"]}),
                "serving_noise": _noise_data(parts["noise"])}
    if op_name == "list":
        return {"model": parts["model"].name, "phase": phase, "ops": [
            {"name": name, "op_class": op.op_class, "layers": str(count),
             "layers_value": int(sp.sympify(count).subs(parts["numbers"]))}
            for name, (count, op) in parts["ops"].items()]}
    op = parts["op"]
    return {
        "model": parts["model"].name, "op": op_name, "op_class": op.op_class,
        "quantity": quantity, "unit": UNITS[quantity], "phase": phase,
        "layers": str(parts["layers"]), "layers_value": int(sp.sympify(parts["layers"]).subs(parts["numbers"])),
        "symbolic": str(parts["expr"]),
        "substitutions": {str(k): str(v) for k, v in parts["subs"].items()},
        "phase_expression": str(parts["phased"]),
        "quant": parts["scheme"], "moe_impl": parts["moe_impl"],
        "with_model_numbers": str(parts["concrete"]),
        "at": {str(k): int(v) for k, v in parts["at"].items()},
        "value": parts["value"],
    }
