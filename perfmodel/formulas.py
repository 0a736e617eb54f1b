"""Printing an op's formula: symbolic, after the phase substitutions, and with numbers."""

from __future__ import annotations

import sympy as sp

from perfmodel.errors import InputError
from perfmodel.graph import build_graph, model_values
from perfmodel.phases import decode_substitutions, prefill_substitutions
from perfmodel.roofline import op_time
from perfmodel.specs.model import load_model
from perfmodel.symbols import b_a, b_e, b_kv, b_w, ep, pp, sigma, tp


def op_formula(model_name: str, op_name: str, quantity: str, phase: str, latex: bool,
               overrides: list[str]) -> list[str]:
    """Lines to print for ``perfmodel formula``."""
    if phase not in ("prefill", "decode"):
        raise InputError("--phase must be prefill or decode for a formula")
    model = load_model(model_name, overrides)
    graph = build_graph(model, decode=phase == "decode")
    ops = {op.name: (count, op) for count, op in graph.all_ops()}
    if op_name == "list":
        return [f"{name:24s} {op.op_class}" for name, (_, op) in ops.items()]
    if op_name not in ops:
        raise InputError(f"unknown op '{op_name}' for {model.name} (known: {', '.join(ops)})")
    count, op = ops[op_name]
    subs = prefill_substitutions() if phase == "prefill" else decode_substitutions()
    expr = op_time(op, subs).total if quantity == "time" else op.quantity(quantity)
    show = sp.latex if latex else sp.pretty
    phased = expr.subs(subs)
    numbers = {**model_values(model), tp: 1, ep: 1, pp: 1, sigma: 0,
               b_w: 2, b_e: 2, b_a: 2, b_kv: 2}
    concrete = sp.simplify(phased.subs(numbers))
    return [
        f"{model.name} · {op_name} · {quantity} per layer ({op.op_class}); layers: {count}",
        "",
        "symbolic (T tokens, P pairs and K cached tokens per sequence):",
        show(expr),
        "",
        f"{phase}: " + ", ".join(f"{k} = {v}" for k, v in subs.items()),
        show(sp.simplify(phased)),
        "",
        "with this model's numbers (bf16, TP=EP=PP=1, uniform routing):",
        show(concrete),
    ]
