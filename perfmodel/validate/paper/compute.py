"""The model's prediction of each headline effect, in the paper's setup.

Every number comes from the public API, :func:`perfmodel.predict` and :func:`perfmodel.sweep`
(grids go through ``sweep``: one vectorized call per model). Each effect's function returns a
long table of the changes its claims look at (column ``quantity``, ``pct`` in %, ``fits``:
whether both sides run in the GPUs' usable memory, ``waves``: W = ⌈B/B_run⌉ of the side that
needs more, above 1 where it outgrows its KV cache, and the point's keys), the throughputs
behind them for the charts, and an explanation in the model's terms: which op dominates each
side, its bound, and what the compared knob does to it (expected distinct experts from the MoE
op's own formula, :func:`perfmodel.ops.moe.distinct_experts`, lambdified).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from perfmodel import predict, sweep
from perfmodel.errors import InputError, SpecError
from perfmodel.report_terminal import leading_ops, merged_ops
from perfmodel.validate.paper.effects import Effect, Study
from perfmodel.validate.paper.verdict import NOT_EXPRESSIBLE, ClaimVerdict, effect_verdict, judge_claim, pct

THROUGHPUT = "throughput_tok_s"


@dataclass
class Context:
    """What every effect is predicted with: the GPU and engine, and a memo of sweeps."""

    gpu: str
    engine: str
    memo: dict[Any, Any] = field(default_factory=dict)

    def sweep(self, model: str, grid: dict[str, list[Any]], lengths: list[int], **fixed: Any) -> pd.DataFrame:
        """:func:`perfmodel.sweep` with S = O over ``lengths`` (column ``length``), memoized."""
        key = (model, repr(sorted(grid.items())), tuple(lengths), repr(sorted(fixed.items())))
        if key not in self.memo:
            self.memo[key] = _sweep_lengths(model, grid, lengths, gpu=self.gpu, engine=self.engine, **fixed)
        return self.memo[key]

    def predict(self, model: str, **kwargs: Any):
        """:func:`perfmodel.predict` on this context's GPU and engine."""
        return predict(model, gpu=self.gpu, engine=self.engine, **kwargs)


def _sweep_lengths(model: str, grid: dict[str, list[Any]], lengths: list[int], **fixed: Any) -> pd.DataFrame:
    """The sweep with a ``length`` column (S = O), and a ``batch`` column when the batch is fixed."""
    if len(lengths) == 1:
        table = sweep(model, grid, input_len=lengths[0], output_len=lengths[0], **fixed).assign(length=lengths[0])
    else:
        table = sweep(model, {**grid, "input_len": lengths, "output_len": lengths}, **fixed)
        table = table[table["input_len"] == table["output_len"]]
        table = table.assign(length=table["input_len"]).reset_index(drop=True)
    if "batch" not in table.columns:
        table = table.assign(batch=fixed.get("batch", 1))
    return table


def rel(value: Any, baseline: Any) -> Any:
    """Relative change in %: 100·(value/baseline − 1)."""
    return 100.0 * (np.asarray(value, dtype=float) / np.asarray(baseline, dtype=float) - 1.0)


def _pairs(table: pd.DataFrame, knob: str, value: Any, baseline: Any, keys: list[str],
           quantity: str) -> pd.DataFrame:
    """The change from ``knob = baseline`` to ``knob = value`` at each combination of ``keys``."""
    side = table[table[knob] == value].set_index(keys)
    base = table[table[knob] == baseline].set_index(keys)
    out = pd.DataFrame({"pct": rel(side[THROUGHPUT], base[THROUGHPUT].reindex(side.index)),
                        "fits": side["fits_in_memory"] & base["fits_in_memory"].reindex(side.index, fill_value=False),
                        "waves": np.maximum(side["kv_waves"], base["kv_waves"].reindex(side.index))},
                       index=side.index).reset_index()
    return out.assign(quantity=quantity)


# --------------------------------------------------------------------------------------------
# The model's terms: which op dominates a pass, and its bound
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Anatomy:
    """One prediction, read for an explanation: E2E and its decode share, and the top op of
    each pass (name, share of the pass's op time, bound, time in s, bytes moved); ``waves``:
    W = ⌈B/B_run⌉, above 1 where the batch outgrows its KV cache, B_run = ``running`` sequences
    holding their whole cache at once (the ops are then theirs, and the decode share is not
    read)."""

    throughput: float
    e2e_s: float
    ttft_s: float
    itl_s: float
    decode_share: float
    top: dict[str, tuple[str, float, str, float, float]]
    op_time: dict[tuple[str, str], float]
    op_bytes: dict[tuple[str, str], float]
    fits: bool
    waves: int = 1
    running: int = 0

    def top_share(self, phase: str, name: str) -> float:
        """The share of op ``name`` in the op time of ``phase``."""
        total = sum(t for (ph, _), t in self.op_time.items() if ph == phase) or 1.0
        return self.op_time[(phase, name)] / total


def anatomy(p) -> Anatomy:
    """Read a :class:`perfmodel.prediction.Prediction` (its metrics and ``ops`` rows)."""
    m = p.metrics
    top: dict[str, tuple[str, float, str, float, float]] = {}
    for phase in ("prefill", "decode"):
        (best,) = leading_ops(p, phase, 1)
        top[phase] = (best["name"], best["share"], best["bound"], best["time_s"], best["bytes"])
    ops = merged_ops(p.ops)
    return Anatomy(m[THROUGHPUT], m["e2e_s"], m["ttft_s"], m["itl_s"], 1 - m["ttft_s"] / m["e2e_s"], top,
                   {(o["pass"], o["name"]): o["time_s"] for o in ops},
                   {(o["pass"], o["name"]): o["bytes"] for o in ops}, bool(m["fits_in_memory"]),
                   int(m.get("kv_waves", 1)), int(m.get("concurrent_sequences", 0)))


def _ms(seconds: float) -> str:
    """A time as people read it (µs, ms or s, 3 significant digits)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale or unit == "µs":
            return f"{seconds / scale:.3g} {unit}"
    return ""  # pragma: no cover


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def describe(a: Anatomy, label: str) -> str:
    """``label``: where its time goes, e.g. ``top-8: decode 91% of E2E; decode step 11 ms,
    moe.experts 67% (memory-bound); prefill: moe.experts 60% (compute-bound)``."""
    name, share, bound, _, _ = a.top["decode"]
    pname, pshare, pbound, _, _ = a.top["prefill"]
    decode = f"decode {a.decode_share:.0%} of E2E, " if a.waves <= 1 else (
        f"outgrowing its KV cache ({a.running} sequences whole at once, their ops), ")
    return (f"{label}: {decode}step {_ms(a.itl_s)} led by {name} "
            f"({share:.0%}, {bound}-bound); prefill led by {pname} ({pshare:.0%}, {pbound}-bound)")


@functools.cache
def _distinct_experts_fn() -> Callable[..., Any]:
    """D(E, k, T, σ): expected distinct experts touched (:func:`perfmodel.ops.moe.distinct_experts`)."""
    import sympy as sp

    from perfmodel.ops.moe import distinct_experts
    from perfmodel.symbols import E, T, k, sigma

    return sp.lambdify((E, k, T, sigma), distinct_experts(), "numpy")


def distinct_experts(experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts ``tokens`` routed tokens touch under uniform routing."""
    return float(_distinct_experts_fn()(experts, top_k, tokens, 0.0))


# --------------------------------------------------------------------------------------------
# The effects
# --------------------------------------------------------------------------------------------

@dataclass
class Computed:
    """What an effect's function returns (see the module)."""

    values: pd.DataFrame
    series: pd.DataFrame
    explanation: str
    notes: list[str] = field(default_factory=list)
    derived: dict[str, Any] | None = None


def _fp8(effect: Effect, ctx: Context) -> Computed:
    s = effect.setup
    model = s.models[0]
    table = ctx.sweep(model, {"batch": s.batch, "quant": ["none", "fp8"]}, s.lengths, **s.layout)
    values = _pairs(table, "quant", "fp8", "none", ["batch", "length"], "fp8_gain")
    b, n = max(s.batch), max(s.lengths)
    bf16, fp8 = (anatomy(ctx.predict(model, batch=b, input_len=n, output_len=n, quant=q, **s.layout))
                 for q in ("none", "fp8"))
    experts = ("decode", "moe.experts")
    at_b = values[values["batch"] == b].set_index("length")["pct"]
    text = (f"At B={b}, S=O={n}: {describe(bf16, 'bf16')}. fp8 halves the weight bytes the memory-bound "
            f"decode reads (moe.experts {_gb(bf16.op_bytes[experts])} → {_gb(fp8.op_bytes[experts])} per step) "
            f"and runs the compute-bound prefill at the fp8 matmul peak (TTFT {_ms(bf16.ttft_s)} → "
            f"{_ms(fp8.ttft_s)}), but attention over the KV cache (attn.core; the KV cache stays bf16) does not "
            f"shrink: the decode step falls by {-rel(fp8.itl_s, bf16.itl_s):.0f}%, not 50%. At B={b} the gain goes "
            f"from {pct(at_b[min(s.lengths)])} at S=O={min(s.lengths)} to {pct(at_b[n])} at S=O={n}, as "
            f"attention's share of the step grows with the context.")
    return Computed(values, table, text)


def _skeleton(effect: Effect, ctx: Context) -> pd.DataFrame:
    s = effect.setup
    return ctx.sweep(s.models[0], dict(s.extra("grid")), s.lengths, batch=s.batch[0], **s.layout)


def _skeleton_anatomy(effect: Effect, ctx: Context, **overrides: int) -> Anatomy:
    s = effect.setup
    n = s.lengths[0]
    return anatomy(ctx.predict(s.models[0], batch=s.batch[0], input_len=n, output_len=n,
                               overrides=overrides, **s.layout))


def _top_k(effect: Effect, ctx: Context) -> Computed:
    table = _skeleton(effect, ctx)
    values = _pairs(table, "top_k", 1, 8, ["ffn", "num_experts"], "top1_vs_top8")
    b = effect.setup.batch[0]
    parts = []
    for ffn in (min(effect.setup.extra("grid")["ffn"]), max(effect.setup.extra("grid")["ffn"])):
        one, eight = (_skeleton_anatomy(effect, ctx, ffn=ffn, num_experts=8, top_k=k) for k in (1, 8))
        key = ("prefill", "moe.experts")
        parts.append(f"FFN {ffn}: {describe(eight, 'top-8')}; top-1 cuts prefill moe.experts "
                     f"{_ms(eight.op_time[key])} → {_ms(one.op_time[key])} (8× fewer FLOPs) but decode "
                     f"moe.experts only {_ms(eight.op_time[('decode', 'moe.experts')])} → "
                     f"{_ms(one.op_time[('decode', 'moe.experts')])}")
    text = (f"At B={b} a decode step routes {b} tokens: top-1 touches {distinct_experts(8, 1, b):.1f} of 8 "
            f"experts, top-8 all 8 (E·(1−(1−k/E)^T)), so the memory-bound decode reads nearly the same expert "
            f"weights either way; the compute-bound prefill's expert time scales with k. " + "; ".join(parts) + ".")
    return Computed(values, table, text)


def _ffn(effect: Effect, ctx: Context) -> Computed:
    table = _skeleton(effect, ctx)
    ffns = sorted(effect.setup.extra("grid")["ffn"])
    keys = ["num_experts", "top_k"]
    total = _pairs(table, "ffn", ffns[-1], ffns[0], keys, "ffn_14336_vs_1792")
    thr = table.pivot_table(index=keys, columns="ffn", values=THROUGHPUT)
    # each step's change as a share of the smallest width's throughput: the slopes of the figure
    steps = [100.0 * (thr[hi] - thr[lo]) / thr[ffns[0]] for lo, hi in zip(ffns, ffns[1:])]
    steep = pd.DataFrame({"pct": steps[0] - pd.concat(steps[1:], axis=1).min(axis=1),
                          "fits": total.set_index(keys)["fits"]}).reset_index()
    values = pd.concat([total, steep.assign(quantity="ffn_first_step_steepness")], ignore_index=True)
    small, large = (_skeleton_anatomy(effect, ctx, ffn=f, num_experts=8, top_k=2) for f in (ffns[0], ffns[-1]))
    fits = total.set_index(keys)["fits"].astype(bool)
    fits = fits if fits.any() else ~fits  # judged on the points that fit (all when none does)
    means = [float(st[fits].mean()) for st in steps]
    shown = ", ".join(f"{lo}→{hi} {pct(m)}" for (lo, hi), m in zip(zip(ffns, ffns[1:]), means))
    first = int((steep.set_index(keys)["pct"][fits] < 0).sum())
    text = (f"Expert weights and FLOPs grow linearly with the FFN width; attention, norms and the per-step "
            f"time do not. {describe(small, f'FFN {ffns[0]} (E=8, k=2)')}; {describe(large, f'FFN {ffns[-1]}')}. "
            f"Mean change per doubling over the {int(fits.sum())} experts × top-k points that fit, as a share "
            f"of the FFN-{ffns[0]} throughput: {shown}; the first doubling is the steepest at {first} of them. "
            f"For a memory-bound step a + b·F (b·F: the expert weights read), throughput 1/(a + b·F) drops "
            f"most in the first doubling only if b·F ≥ a/2 there, i.e. if the experts already take a third of "
            f"the step at FFN {ffns[0]}; here moe.experts is {small.top_share('decode', 'moe.experts'):.0%} of "
            f"that decode step (E=8, k=2), so the model sits at the edge of the paper's shape.")
    return Computed(values, table, text)


def _experts(effect: Effect, ctx: Context) -> Computed:
    table = _skeleton(effect, ctx)
    keys = ["ffn", "top_k"]
    total = _pairs(table, "num_experts", 64, 8, keys, "experts_64_vs_8")
    early = _pairs(table, "num_experts", 32, 8, keys, "x").set_index(keys)["pct"]
    late = _pairs(table, "num_experts", 64, 32, keys, "x").set_index(keys)["pct"]
    sat = pd.DataFrame({"pct": late.abs() - early.abs(), "fits": total.set_index(keys)["fits"]}).reset_index()
    values = pd.concat([total, sat.assign(quantity="experts_saturation")], ignore_index=True)
    b, ffn = effect.setup.batch[0], min(effect.setup.extra("grid")["ffn"])
    e8, e64 = (_skeleton_anatomy(effect, ctx, ffn=ffn, num_experts=e, top_k=2) for e in (8, 64))
    key = ("decode", "moe.experts")
    text = (f"More experts at the same top-k spread a step's {b} tokens over more distinct experts: at k=2 "
            f"{distinct_experts(8, 2, b):.1f} of 8 vs {distinct_experts(64, 2, b):.1f} of 64 "
            f"(E·(1−(1−k/E)^T)), so the memory-bound decode reads ~{distinct_experts(64, 2, b) / distinct_experts(8, 2, b):.1f}× "
            f"the expert weights (moe.experts {_gb(e8.op_bytes[key])} → {_gb(e64.op_bytes[key])} per step) for "
            f"the same FLOPs. {describe(e8, 'E=8')}; {describe(e64, 'E=64')}. The model has no mechanism by which "
            f"more, equally sized experts speed a step up; the loss saturates once every expert is touched.")
    return Computed(values, table, text)


def _fused(effect: Effect, ctx: Context) -> Computed:
    s = effect.setup
    model, n, b = s.models[0], max(s.lengths), 16 if 16 in s.batch else s.batch[0]
    by_batch = ctx.sweep(model, {"batch": s.batch, "moe_impl": ["fused", "unfused"]}, [n], **s.layout)
    by_length = ctx.sweep(model, {"moe_impl": ["fused", "unfused"]}, s.lengths, batch=b, **s.layout)
    values = pd.concat([_pairs(by_batch, "moe_impl", "fused", "unfused", ["batch", "length"], "fused_gain"),
                        _pairs(by_length, "moe_impl", "fused", "unfused", ["batch", "length"], "fused_gain")],
                       ignore_index=True).drop_duplicates(["batch", "length"])
    table = pd.concat([by_batch, by_length.assign(batch=b)], ignore_index=True).drop_duplicates(
        ["batch", "length", "moe_impl"])
    preds = {impl: ctx.predict(model, batch=b, input_len=n, output_len=n, moe_impl=impl, **s.layout)
             for impl in ("fused", "unfused")}
    fused, unfused = (anatomy(p) for p in preds.values())

    def fixed(impl: str, phase: str) -> float:
        return sum(o["latency_s"] for o in preds[impl].ops if o["pass"] == phase and o["name"].startswith("moe."))

    key = ("prefill", "moe.dispatch")
    text = (f"At B={b}, S=O={n}: {describe(fused, 'fused')}. The unfused loop runs the same expert GEMMs "
            f"(same FLOPs and weight bytes) one touched expert at a time, with a gather and a scatter each: "
            f"the MoE ops' fixed kernel time per decode step grows {_ms(fixed('fused', 'decode'))} → "
            f"{_ms(fixed('unfused', 'decode'))} and the prefill's moe.dispatch moves "
            f"{_gb(fused.op_bytes[key])} → {_gb(unfused.op_bytes[key])}. Decode step {_ms(fused.itl_s)} → "
            f"{_ms(unfused.itl_s)}, TTFT {_ms(fused.ttft_s)} → {_ms(unfused.ttft_s)}: fused gains "
            f"{pct(rel(fused.throughput, unfused.throughput))}. The fixed per-expert cost weighs most where the "
            f"step is short (small batch, short context) and least where expert weights or attention dominate.")
    return Computed(values, table, text)


def _layout_of(effect: Effect, model: str) -> dict[str, int]:
    return dict((effect.setup.extra("layout_by_model") or {}).get(model, effect.setup.layout))


def _lengths(effect: Effect, ctx: Context) -> Computed:
    s = effect.setup
    short, long = min(s.lengths), max(s.lengths)
    values, tables = [], []
    for model in s.models:
        table = ctx.sweep(model, {"batch": s.batch}, [short, long], **_layout_of(effect, model)).assign(model=model)
        tables.append(table)
        values.append(_pairs(table, "length", short, long, ["model", "batch"], "short_vs_long"))
    values = pd.concat(values, ignore_index=True)
    table = pd.concat(tables, ignore_index=True)
    best = values[values["fits"]].sort_values("pct").iloc[-1] if values["fits"].any() else values.iloc[0]
    b, model = int(best["batch"]), best["model"]
    a_short, a_long = (anatomy(ctx.predict(model, batch=b, input_len=n, output_len=n, **_layout_of(effect, model)))
                       for n in (short, long))
    att = ("decode", "attn.core")
    text = (f"Throughput counts input tokens; at large batch a request is mostly decode steps, whose attention "
            f"reads every cached token. Largest gain: {model} at B={b} ({pct(best['pct'])}): "
            f"{describe(a_short, f'S=O={short}')}; {describe(a_long, f'S=O={long}')}; attn.core grows "
            f"{_ms(a_short.op_time[att])} → {_ms(a_long.op_time[att])} per step (memory-bound on the KV cache), "
            f"more so for models whose experts are small next to their KV cache.")
    return Computed(values, table, text)


def _parallel(effect: Effect, ctx: Context) -> Computed:
    s = effect.setup
    model, b, n = s.models[0], s.batch[0], s.lengths[0]
    layouts: dict[str, dict[str, int]] = dict(s.extra("layouts"))
    preds = {name: ctx.predict(model, batch=b, input_len=n, output_len=n, **lay) for name, lay in layouts.items()}
    an = {name: anatomy(p) for name, p in preds.items()}
    base_name = next(iter(layouts))
    base = an[base_name]
    rows = [{"layout": name, "pct": float(rel(a.throughput, base.throughput)), "fits": a.fits and base.fits,
             "quantity": "scaling"} for name, a in an.items() if name != base_name]
    gain = {r["layout"]: r["pct"] for r in rows}
    fits = all(a.fits for a in an.values())
    rows += [{"layout": "TP+EP − TP-only", "pct": gain["TP+EP"] - gain["TP-only"], "fits": fits,
              "quantity": "scaling_tpep_minus_tp"},
             {"layout": "PP+EP − TP+EP", "pct": gain["PP+EP"] - gain["TP+EP"], "fits": fits,
              "quantity": "scaling_ppep_minus_tpep"}]
    series = pd.DataFrame([{"layout": name, "gpus": p.workload.gpus, THROUGHPUT: an[name].throughput,
                            "itl_s": an[name].itl_s, "ttft_s": an[name].ttft_s} for name, p in preds.items()])

    def comm(name: str) -> float:
        return sum(o["time_s"] for o in preds[name].ops if o["pass"] == "decode" and o["name"].startswith("comm."))

    experts = ("decode", "moe.experts")
    text = (f"{model}, B={b}, S=O={n}. {describe(base, '1 GPU')}. TP=4 splits every weight matrix and the KV "
            f"heads over 4 GPUs, so the memory-bound step shrinks ~4× but pays all-reduces "
            f"({_ms(comm('TP-only'))} per step): step {_ms(base.itl_s)} → {_ms(an['TP-only'].itl_s)}. TP+EP "
            f"places whole experts, a quarter on each GPU, which reads the touched ones among its own: the "
            f"same bytes on average, but the step waits for the GPU whose experts the batch touched most "
            f"(moe.experts {_ms(an['TP-only'].op_time[experts])} → {_ms(an['TP+EP'].op_time[experts])} per "
            f"step): step {_ms(an['TP+EP'].itl_s)}. "
            f"With a fixed batch and no micro-batching, pipeline stages run one after the other: a PP step "
            f"walks all layers on one GPU at a time (PP-only step {_ms(an['PP-only'].itl_s)}), and PP+EP gains "
            f"only from the split within each stage ({_ms(an['PP+EP'].itl_s)}).")
    return Computed(pd.DataFrame(rows), series, text)


def _top_k_range(effect: Effect, ctx: Context) -> Computed:
    s = effect.setup
    values, tables, parts = [], [], []
    for model in s.models:
        table = ctx.sweep(model, {"top_k": [1, 32], "batch": s.batch}, s.lengths, **s.layout).assign(model=model)
        tables.append(table)
        values.append(_pairs(table, "top_k", 32, 1, ["model", "batch", "length"], "topk32_vs_1"))
        e, lo, hi = routed_experts(model), min(s.batch), max(s.batch)
        parts.append(f"{model} (E={e}): at B={lo} top-1 touches {distinct_experts(e, 1, lo):.1f} and "
                     f"top-32 {distinct_experts(e, 32, lo):.1f} experts per layer and step, at B={hi} "
                     f"{distinct_experts(e, 1, hi):.1f} vs {distinct_experts(e, 32, hi):.1f}")
    values = pd.concat(values, ignore_index=True)
    small = values[values["batch"] == min(s.batch)]["pct"].mean()
    large = values[values["batch"] == max(s.batch)]["pct"].mean()
    text = ("Decode is memory-bound on the routed experts' weights, which follow the distinct experts touched "
            "(E·(1−(1−k/E)^T), T = B tokens per step): " + "; ".join(parts) + ". At small batch top-32 reads "
            "up to 32× the expert weights of top-1; at large batch top-1 already touches most experts, and "
            "top-32 adds FLOPs (the prefill's compute-bound expert GEMMs) more than bytes. The model's mean "
            f"change is {pct(small)} at B={min(s.batch)} and {pct(large)} at B={max(s.batch)}"
            + (": the opposite trend to the paper's, whose loss grows with the batch." if abs(small) > abs(large)
               else ": the paper's trend, a loss growing with the batch."))
    return Computed(values, pd.concat(tables, ignore_index=True), text)


def routed_experts(model: str) -> int:
    """The routed experts E of a zoo model as built."""
    from perfmodel.specs.model import load_model

    spec = load_model(model)
    if spec.moe is None:
        raise SpecError(f"{model} has no routed experts")
    return spec.moe.n_experts


def _pruning(effect: Effect, ctx: Context) -> Computed:
    s = effect.setup
    ratios = [0.0, *s.extra("ratios")]
    values, tables = [], []
    for model in s.models:
        for kind, key in (("inter", "prune_experts"), ("intra", "prune_ffn")):
            table = ctx.sweep(model, {key: ratios, "batch": s.batch}, s.lengths, **s.layout)
            table = table.rename(columns={key: "ratio"}).assign(model=model, kind=kind)
            tables.append(table)
            for ratio in ratios[1:]:
                values.append(_pairs(table, "ratio", ratio, 0.0, ["model", "kind", "batch", "length"],
                                     "pruning_gain").assign(ratio=ratio))
    values = pd.concat(values, ignore_index=True)
    lowest = values.sort_values("pct").iloc[0]
    text = (f"Pruning only removes work in the model: inter-pruning lowers E (fewer distinct experts touched "
            f"per step once a step's tokens cover them, fewer expert weights read), intra-pruning narrows every "
            f"expert (fewer bytes and FLOPs per expert); the efficiencies of the {ctx.engine} profile do not "
            f"depend on the pruned shape. Smallest change: {pct(lowest['pct'])} ({lowest['model']}, "
            f"{lowest['kind']} {lowest['ratio']:.1%}, B={int(lowest['batch'])}; at B=1 inter-pruning hardly "
            f"matters, the step reads k experts either way)"
            + (". So no pruned point is slower: a slowdown at small ratios needs a kernel effect the model lacks, "
               "e.g. vLLM's fused MoE falling back to untuned tiles for an expert count or width it has no "
               "tuned config for." if lowest["pct"] >= 0 else "."))
    return Computed(values, pd.concat(tables, ignore_index=True), text)


def _speculative(effect: Effect, ctx: Context) -> Computed:
    s = effect.setup
    target, b, n = s.models[0], s.batch[0], s.lengths[0]
    drafts: list[str] = list(s.extra("drafts"))
    gamma = int(s.extra("spec_tokens"))
    assumed: dict[str, float] = dict(s.extra("assumed_accept"))
    best, alpha = next(iter(assumed.items()))
    alphas = [round(a, 2) for a in np.arange(0.0, 0.99, 0.02)]
    table = ctx.sweep(target, {"spec_draft": ["none", *drafts], "spec_accept": alphas}, [n], batch=b,
                      spec_tokens=gamma, **s.layout)
    plain = float(table.loc[table["spec_draft"] == "none", THROUGHPUT].iloc[0])
    table = table.assign(speedup=table[THROUGHPUT] / plain)
    curves = {d: table[table["spec_draft"] == d].sort_values("spec_accept") for d in drafts}

    def at(draft: str, a: float) -> float:
        c = curves[draft]
        return float(np.interp(a, c["spec_accept"], c[THROUGHPUT]))

    fits = bool(table["fits_in_memory"].all())
    rows = []
    for d in drafts:
        if d == best:
            continue
        rows.append({"draft": d, "quantity": "1.7b_over_draft", "pct": float(rel(at(best, alpha), at(d, alpha))),
                     "fits": fits})
        rows.append({"draft": d, "quantity": "draft_vs_1.7b", "pct": float(rel(at(d, alpha), at(best, alpha))),
                     "fits": fits})
    lo, hi = s.extra("spec_tokens_range")
    by_gamma = ctx.sweep(target, {"spec_tokens": [lo, hi]}, [n], batch=b, spec_draft=best, spec_accept=alpha,
                         **s.layout)
    thr = dict(zip(by_gamma["spec_tokens"], by_gamma[THROUGHPUT]))
    rows.append({"draft": best, "quantity": "more_draft_tokens", "pct": float(rel(thr[hi], thr[lo])),
                 "fits": fits})
    derived = _derived_accept(effect, curves, best, at(best, alpha), alpha)
    step = table[table["spec_accept"] == alphas[0]].set_index("spec_draft")["spec_draft_s"]
    ranking = sorted(drafts, key=lambda d: -at(d, alpha))
    text = (f"{target}, B={b}, S=O={n}, γ={gamma}, TP={s.layout.get('tp', 1)}. A step costs γ draft passes "
            f"plus one verify pass and yields τ = (1−α^(γ+1))/(1−α) tokens; the draft's γ passes take "
            + ", ".join(f"{d.removeprefix('qwen3-')} {_ms(step[d])}" for d in drafts)
            + f". At one α for every draft (α={alpha}, assumed) the cheapest draft wins: "
            f"{' > '.join(d.removeprefix('qwen3-') for d in ranking)}. The paper's ranking needs each draft's "
            f"acceptance to differ: given α={alpha} for {best} (assumed), "
            + ", ".join(f"{d.removeprefix('qwen3-')} needs α≈{v:.2f}" if v is not None
                        else f"{d.removeprefix('qwen3-')}: no α in [0, 0.98]" for d, v in derived.items())
            + " (derived from the paper's ratios: an assumption, not a measurement).")
    return Computed(pd.DataFrame(rows), table, text, derived={"assumed": {best: alpha}, "derived": derived,
                                                              "spec_tokens": gamma})


def _derived_accept(effect: Effect, curves: dict[str, pd.DataFrame], best: str, best_thr: float,
                    alpha: float) -> dict[str, float | None]:
    """The acceptance α each other draft needs for the paper's ratio to ``best`` (claim midpoints),
    by inverting its throughput(α) curve (monotone in α)."""
    out: dict[str, float | None] = {}
    for claim in effect.claims:
        draft = claim.where.get("draft")
        if draft is None or claim.low is None or claim.high is None:
            continue
        mid = (claim.low + claim.high) / 200.0
        wanted = best_thr / (1 + mid) if claim.quantity == "1.7b_over_draft" else best_thr * (1 + mid)
        c = curves[draft]
        thr, acc = c[THROUGHPUT].to_numpy(), c["spec_accept"].to_numpy()
        out[draft] = float(np.interp(wanted, thr, acc)) if thr[0] <= wanted <= thr[-1] else None
    return out


#: Effect id → the function that predicts it.
EFFECTS: dict[str, Callable[[Effect, Context], Computed]] = {
    "E1": _fp8, "E2": _top_k, "E3": _ffn, "E4": _experts, "E5": _fused, "E6": _lengths,
    "E7": _parallel, "E8": _top_k_range, "E9": _pruning, "E10": _speculative,
}
#: The effect-specific setup keys each prediction reads (:class:`perfmodel.validate.paper.effects.Setup`).
SETUP_KEYS: dict[str, tuple[str, ...]] = {
    "E2": ("grid",), "E3": ("grid",), "E4": ("grid",), "E7": ("layouts",), "E9": ("ratios",),
    "E10": ("drafts", "spec_tokens", "spec_tokens_range", "assumed_accept"),
}


# --------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------

@dataclass
class EffectResult:
    """An effect predicted and judged."""

    effect: Effect
    computed: Computed
    claims: list[ClaimVerdict]
    verdict: str
    notes: list[str]


#: Columns of an effect's value table that are not a point's keys.
_NOT_KEYS = ("pct", "fits", "waves", "quantity")


def point_text(row: pd.Series) -> str:
    """A point of an effect's value table by its keys, e.g. ``num_experts=64 top_k=8``."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                    if k not in _NOT_KEYS and v == v)


def select(values: pd.DataFrame, quantity: str, where: dict[str, Any]) -> pd.DataFrame:
    """The rows of ``quantity`` matching ``where`` (a value, or a list of values, per column)."""
    rows = values[values["quantity"] == quantity]
    for key, wanted in where.items():
        if key not in rows.columns:
            raise SpecError(f"claim filter '{key}' is not a key of quantity '{quantity}' "
                            f"(keys: {', '.join(c for c in rows.columns if c not in _NOT_KEYS)})")
        rows = rows[rows[key].isin(wanted if isinstance(wanted, list) else [wanted])]
    return rows


def judge(effect: Effect, computed: Computed, tolerance: float) -> EffectResult:
    """Judge each claim on the points that fit in memory (all of them when none does); a point
    whose batch the KV cache does not hold at once counts, run as vLLM's scheduler runs it, and a
    note says which."""
    notes = list(computed.notes)
    left_out: dict[str, list[str]] = {}  # note → the claims it applies to
    verdicts = []
    for claim in effect.claims:
        rows = select(computed.values, claim.quantity, claim.where)
        if rows.empty:
            raise SpecError(f"claim {claim.id}: no predicted point matches quantity '{claim.quantity}' "
                            f"where {claim.where}")
        fitting = rows[rows["fits"].astype(bool)]
        if len(fitting) < len(rows):
            left = [point_text(r) for _, r in rows[~rows["fits"].astype(bool)].iterrows()]
            note = (f"{len(left)} of {len(rows)} points do not fit in the GPUs' usable memory"
                    + (" and are left out, as the paper's figures omit OOM points" if len(fitting)
                       else "; none fits, so all are judged") + f" ({'; '.join(left)})")
            left_out.setdefault(note, []).append(claim.id)
        waved = fitting[fitting["waves"] > 1] if "waves" in fitting.columns else fitting.iloc[:0]
        if len(waved):
            note = (f"{len(waved)} of {len(rows)} points outgrow the KV cache, their batch's sequences not "
                    "holding their whole cache at once (vLLM's schedule, with preemptions) "
                    f"({'; '.join(f'{point_text(r)}: W = {int(r.waves)}' for _, r in waved.iterrows())})")
            left_out.setdefault(note, []).append(claim.id)
        used = fitting if len(fitting) else rows
        verdicts.append(judge_claim(claim, used["pct"].tolist(), tolerance))
    notes += [f"{', '.join(ids)}: {note}" for note, ids in left_out.items()]
    return EffectResult(effect, computed, verdicts, effect_verdict(verdicts, effect.missing), notes)


def compute_effects(study: Study, ctx: Context) -> list[EffectResult]:
    """Predict and judge every effect of ``study``."""
    results = []
    for effect in study.effects:
        fn = EFFECTS.get(effect.id)
        if fn is None:
            raise SpecError(f"no prediction for effect {effect.id} (known: {', '.join(EFFECTS)})")
        missing = [key for key in SETUP_KEYS.get(effect.id, ()) if effect.setup.extra(key) is None]
        if missing:
            raise SpecError(f"effect {effect.id}: its setup needs {', '.join(missing)}")
        try:
            computed = fn(effect, ctx)
        except InputError as exc:  # e.g. fp8 on a GPU without an fp8 peak
            results.append(not_expressible(effect, f"Not expressible on {ctx.gpu} with the {ctx.engine} "
                                                   f"profile: {exc}."))
            continue
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # a study file's setup without its keys
            raise SpecError(f"effect {effect.id}: its setup lacks what its prediction reads "
                            f"({type(exc).__name__}: {exc})") from None
        results.append(judge(effect, computed, study.study.tolerance_pp))
    return results


def not_expressible(effect: Effect, reason: str) -> EffectResult:
    """An effect the model cannot predict in this setup: no values, the reason as explanation."""
    empty = pd.DataFrame({"quantity": [], "pct": [], "fits": []})
    claims = [ClaimVerdict(c, (), NOT_EXPRESSIBLE, 0) for c in effect.claims]
    return EffectResult(effect, Computed(empty, pd.DataFrame(), reason), claims, NOT_EXPRESSIBLE, [])
