"""Rich tables of a prediction for the terminal.

Columns fold a value that does not fit the terminal onto a second line rather than cut it;
written to a file or a pipe, the CLI's console is wide enough that nothing folds.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from perfmodel.prediction import HOST_BOUND, LAUNCH_BOUND, Prediction, decode_regime, prefill_regime
from perfmodel.pruning import pruning_text
from perfmodel.wording import count_of


#: What a phase's throughput counts (perfmodel.prediction.request_metrics): a request's tokens in
#: and out over E2E, a prefill's prompt tokens over its time, a decode step's sequences over it.
THROUGHPUT_LABELS = {"request": "throughput B·(S+O)/E2E", "prefill": "throughput B·S/TTFT",
                     "decode": "throughput B/ITL"}


def format_time(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _value(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def overrides_text(overrides: dict) -> str:
    """``--set`` overrides as ``KEY=VALUE, ...`` ("none" without any)."""
    return ", ".join(f"{k}={_value(v)}" for k, v in overrides.items()) or "none"


def header_lines(p: Prediction) -> list[str]:
    """What was predicted: model, GPU and profile; the workload and its GPU layout; the
    ``--set`` overrides and the pruning applied after them."""
    w, prov = p.workload, p.provenance
    kind = " (calibrated)" if prov["calibrated"] else " (uncalibrated roofline)"
    workload = f"B={w.batch} S={w.input_len} O={w.output_len}"
    if p.phase == "decode":
        workload += f" L={w.context if w.context is not None else w.input_len}"
    kv = f" (KV {w.kv_dtype})" if w.kv_dtype else ""
    skew = f" skew={w.skew:g}" if w.skew else ""
    skew += (f" quant={w.quant}" if w.quant else "") + (f" moe={w.moe_impl}" if w.moe_impl != "fused" else "")
    return [f"{p.model} on {prov['gpu']} · {prov['profile']}{kind} · phase {p.phase}",
            f"workload: {workload} {w.dtype}{kv}{skew} · layout: {w.layout_label} "
            f"= {w.gpus} GPU{'s' if w.gpus != 1 else ''}",
            f"overrides: {overrides_text(p.overrides)}"
            + (f" · pruning: {pruning_text(p.pruning)}" if p.pruning else "")]


def speculative_text(record: dict) -> str:
    """Speculative decoding in one line: draft, γ, α (or τ given), expected tokens per
    target step and the split of a step's time into the draft's passes and the verify pass."""
    given = (f"tau={record['spec_accepted_len']:g} given" if record["spec_accepted_len"] is not None
             else f"alpha={record['spec_accept']:g}")
    head = f"speculative: draft {record['draft']}, gamma={record['spec_tokens']}, {given}"
    step, draft, verify = record["step_s"], record["draft_s"], record["verify_s"]
    if math.isnan(step):  # a prefill has no step
        return f"{head}; TTFT includes the draft's prefill"
    return (f"{head}: {record['tokens_per_step']:.3f} tokens per target step; step "
            f"{format_time(step)} = draft {format_time(draft)} ({draft / step:.0%}) + verify "
            f"{format_time(verify)} ({verify / step:.0%})")


def sweep_header(header: dict) -> str:
    """The line above a sweep's table: model, GPU, engine, phase, fixed values, overrides, and the
    baseline of the change columns where one was given."""
    fixed = " ".join(f"{k}={v}" for k, v in header["fixed"].items())
    line = (f"{header['model']} on {header['gpu']} · {header['engine']} · phase {header['phase']}"
            f"{f' · {fixed}' if fixed else ''} · overrides: {overrides_text(header['overrides'])}")
    base = header.get("baseline")
    if base:
        value = f"{base['value']:g}" if isinstance(base["value"], float) else base["value"]
        line += f"\n*_vs_base_pct: change in % against the row with {base['key']}={value}, every other key alike"
        if base.get("change_band"):
            from perfmodel.sweep_change import change_band_text

            line += "\n" + change_band_text(base["change_band"])
    return line


def _waves_text(m: dict, batch: int) -> str:
    """How the batch runs: all sequences at once, or, where it outgrows the KV cache, B_run
    holding their whole cache at once and the requests preempted as vLLM's scheduler runs it
    (memory and the passes are then B_run's); "–" when it does not run or the prediction has no
    schedule."""
    waves, running = m.get("kv_waves", 0), m.get("concurrent_sequences", 0)
    if waves == 1:
        return f"all {batch} sequences at once"
    if waves > 1:
        return (f"outgrown: {running} of {batch} sequences hold their whole cache at once; "
                f"{m.get('kv_preemptions', 0)} preempted and recomputed (memory, passes: of {running})")
    return "–"


def _launch_rows(m: dict[str, float]) -> list[tuple[str, str, None]]:
    """The lines under TTFT for a prefill the host launches: the host's launch floor
    (``prefill_launch_s``), whether it sets the prefill, and the part of it spent on what the
    engine launches from Python (``prefill_uncompiled_s``: ops run uncompiled, a tiled MoE
    kernel's launches); none for a graph-replayed or GPU-only pass."""
    launch, uncompiled = m.get("prefill_launch_s", 0.0), m.get("prefill_uncompiled_s", 0.0)
    if not launch > 0:
        return []
    sets = prefill_regime(m, True) == LAUNCH_BOUND
    rows = [("  the host's launch of the prefill" + (", which sets it" if sets else ", hidden behind the GPU's"),
             format_time(launch), None)]
    if uncompiled > 0:
        rows.append(("    of it, what the engine launches from Python", format_time(uncompiled), None))
    return rows


def metric_rows(p: Prediction) -> list[tuple[str, str, float | None]]:
    """The prediction's metrics as (name, formatted value, relative band or None), the rows a
    phase does not have left out: timings with the host's parts under them, throughput, memory."""
    m, band = p.metrics, p.provenance.get("error_band")
    host = m.get("request_host_s", float("nan"))
    floor = m.get("decode_host_s", float("nan"))
    graph = m.get("decode_graph_batch", float("nan"))
    rows = [("TTFT", format_time(m["ttft_s"]), band and band["ttft"]),
            *_launch_rows(m),
            *([(f"  of it, the call's {count_of(p.workload.batch, 'request')} on the host", format_time(host), None)]
              if host > 0 else []),
            ("ITL (decode step)", format_time(m["itl_s"]), band and band["decode_step"]),
            *([("  the CUDA graph it replays (B padded to a captured size)", f"{graph:.0f} sequences", None)]
              if graph > p.workload.batch else []),
            *([(f"  the host's time for its {count_of(p.workload.batch, 'sequence')}"
                + (", which sets it" if decode_regime(m) == HOST_BOUND else ", hidden behind the GPU's"),
                format_time(floor), None)]
              if floor > 0 else []),
            ("E2E", format_time(m["e2e_s"]), band and band["e2e"]),
            (THROUGHPUT_LABELS.get(p.phase, THROUGHPUT_LABELS["request"]), f"{m['throughput_tok_s']:,.0f} tok/s",
             band and band["throughput"]),
            *([(f"  per GPU, of the layout's {p.workload.gpus}", f"{m['throughput_tok_s'] / p.workload.gpus:,.0f} tok/s",
                None)] if p.workload.gpus > 1 else []),
            ("output tokens/s", f"{m['output_throughput_tok_s']:,.0f} tok/s", None),
            ("params / active", f"{m['params'] / 1e9:.2f} B / {m['active_params'] / 1e9:.2f} B", None),
            ("weights", _bytes(m["weights_bytes"]), None),
            ("KV cache", _bytes(m["kv_cache_bytes"]), None),
            (f"activations ({p.provenance.get('activations', 'peak op')})", _bytes(m["activation_bytes"]), None),
            ("fits in memory", f"{'yes' if m['fits_in_memory'] else 'NO'} "
             f"({_bytes(m['memory_bytes'])} of {_bytes(m['memory_capacity_bytes'])})", None),
            ("KV-cache schedule", _waves_text(m, p.workload.batch), None)]
    return [(name, value, rel or None) for name, value, rel in rows
            if not (value.startswith("nan") or value == "–")]


def _with_shares(ops: list[dict]) -> list[dict]:
    """The ops that take time, each with its ``share`` of its pass's time (the whole pass, all
    layers)."""
    by_pass: dict[str, float] = {}
    for op in ops:
        by_pass[op["pass"]] = by_pass.get(op["pass"], 0.0) + op["time_s"]
    return [{**op, "share": op["time_s"] / by_pass[op["pass"]] if by_pass[op["pass"]] else 0.0}
            for op in ops if op["time_s"] > 0]


def op_table_rows(p: Prediction) -> list[dict]:
    """The ops that take time, each with its ``share`` of its pass's time and ``of_roof``
    (:meth:`~perfmodel.prediction.Prediction.op_dicts`)."""
    return _with_shares(p.op_dicts())


#: Op fields that add up over an op's layer groups (s, FLOP, bytes).
_ADDITIVE = ("flops", "bytes", "comm_bytes", "compute_s", "memory_s", "link_s", "tiles_s", "latency_s", "time_s")


def merged_ops(ops: list[dict]) -> list[dict]:
    """One row per pass and op name: an op that several layer groups hold (DeepSeek's dense first
    layers beside its MoE layers, Llama 4's rotary and NoPE layers) summed over them, its other
    fields (``bound``) those of its longest group."""
    merged: dict[tuple[str, str], dict] = {}
    for op in ops:
        key = (op["pass"], op["name"])
        if key not in merged:
            merged[key] = dict(op)
            continue
        kept = merged[key]
        longest = op if op["time_s"] > kept["time_s"] else kept
        merged[key] = {**longest, **{f: kept.get(f, 0.0) + op.get(f, 0.0) for f in _ADDITIVE if f in op}}
    return list(merged.values())


def leading_ops(p: Prediction, pass_name: str, count: int = 2) -> list[dict]:
    """The ``count`` ops of a pass that take the most time, longest first, each with its
    ``share`` of the pass's op time (an op of several layer groups summed over them:
    :func:`merged_ops`)."""
    ops = [op for op in _with_shares(merged_ops(p.ops)) if op["pass"] == pass_name]
    return sorted(ops, key=lambda op: op["time_s"], reverse=True)[:count]


def time_split(p: Prediction) -> dict | None:
    """Where the time goes: ``decode_share_of_e2e`` (None unless a request whose batch runs in one
    wave), ``first_wave`` (the passes are those of B_run sequences, the batch outgrowing its KV
    cache) and ``passes``, each pass
    (prefill, decode) with its time ``time_s``, ``set_by`` (``gpu``, or ``host`` where the host's
    time for the pass sets it: a decode step's floor, a prefill's launch) and its two ``leading``
    ops (``op``, ``share`` of the pass's op time, ``bound``); None where the prediction has neither
    pass (a speculative decode's passes are its draft and verify passes, in the per-op table)."""
    m = p.metrics
    passes = []
    for pass_name, value in (("prefill", m.get("prefill_s")), ("decode", m.get("decode_step_s"))):
        ops = leading_ops(p, pass_name)
        if not ops or value is None or not value == value:
            continue
        host = (decode_regime(m) == HOST_BOUND if pass_name == "decode"
                else prefill_regime(m, True) == LAUNCH_BOUND)
        passes.append({"pass": pass_name, "time_s": value, "set_by": "host" if host else "gpu",
                       "leading": [{"op": op["name"], "share": op["share"], "bound": op["bound"]} for op in ops]})
    if not passes:
        return None
    waves = m.get("kv_waves", 1) > 1
    decoding = any(part["pass"] == "decode" for part in passes)
    share = 1 - m["ttft_s"] / m["e2e_s"] if p.phase == "request" and decoding and m["e2e_s"] > 0 and not waves else None
    return {"decode_share_of_e2e": share, "first_wave": waves, "passes": passes}


def time_split_text(p: Prediction) -> str | None:
    """:func:`time_split` in one line: ``where the time goes: decode 97% of E2E · prefill 1.5 s:
    moe.experts 81% (compute-bound), … · decode step 24.9 ms: …``."""
    split = time_split(p)
    if split is None:
        return None
    parts = [] if split["decode_share_of_e2e"] is None else [f"decode {split['decode_share_of_e2e']:.0%} of E2E"]
    for part in split["passes"]:
        lead = ", ".join(f"{op['op']} {op['share']:.0%} ({op['bound']}-bound)" for op in part["leading"])
        if part["set_by"] == "host":
            what = "time for it" if part["pass"] == "decode" else "launch of it"
            lead = f"the host's {what}, over its kernels: {lead}"
        label = "decode step" if part["pass"] == "decode" else "prefill"
        parts.append(f"{label} {format_time(part['time_s'])}: {lead}")
    waves = " (the passes of the sequences whose whole cache fits at once)" if split["first_wave"] else ""
    return f"where the time goes{waves}: " + " · ".join(parts)


def _of_roof(share: float | None) -> str:
    return "–" if share is None else f"{share:.0%}"


def moe_l2_text(spill: dict | None) -> str | None:
    """One line on routed experts larger than the GPU's L2 cache, where the profile costs it."""
    if not spill:
        return None
    share = 1 - spill["l2_mib"] / spill["expert_mib"]
    return (f"moe.experts: one expert's {spill['expert_mib']:,.0f} MiB of weights on one GPU outgrow the "
            f"{spill['l2_mib']:.0f} MiB L2 cache: compute time x {spill['factor']:.2f} (1 + s_L2 {spill['s_l2']:.2f} "
            f"x the {share:.0%} that L2 cannot hold, fitted on the fused-MoE kernel timed alone)")


def moe_table_text(table: dict | None, passes: dict[str, int] | None = None) -> str | None:
    """One line on the tuned fused-MoE tile table the experts meet, where the profile costs it;
    for a timed table, what it adds at each of the prediction's ``passes`` ({pass: tokens})."""
    if not table:
        return None
    if "extra" in table:
        import sympy as sp

        from perfmodel.ops.moe import table_extra

        points = tuple(zip(table["extra"]["tokens"], table["extra"]["extra_s"]))
        at = ", ".join(f"{1e6 * float(table_extra(sp.Integer(tokens), points)):+.0f} us at the {name}'s {tokens:,} "
                       "tokens" for name, tokens in (passes or {}).items())
        extra = [1e6 * x for x in table["extra"]["extra_s"]]
        return (f"moe.experts: vLLM's tuned tile table for these experts, timed against its default tile rule "
                f"pass by pass, adds per layer {at or 'by the pass'} (the measured pass nearest each pass; "
                f"{min(extra):+.0f} to {max(extra):+.0f} us over the passes timed)")
    return (f"moe.experts: vLLM's tuned tile table for these experts starts at {table['from_tokens']} tokens, so "
            f"its decode steps run tiles made for larger passes: memory time x {table['memory_factor']:.2f}, as "
            "an A/B of the tiles measured at 1-64 sequences (assumed at every pass)")


def prediction_passes(p: Prediction) -> dict[str, int]:
    """The tokens of one pass of each phase a prediction holds: a prefill pass (B·S, at most the
    engine's chunk) and a decode step (B)."""
    w, chunk = p.workload, p.provenance["options"].get("prefill_chunk_tokens")
    prefill = w.batch * w.input_len if chunk is None else min(w.batch * w.input_len, chunk)
    return {name: tokens for name, tokens in (("prefill", prefill), ("decode step", w.batch))
            if p.phase in ("request", name.split()[0])}


def print_prediction(p: Prediction, console: Console) -> None:
    """Header, metrics (with the error band where it applies, and why it does not elsewhere),
    memory and the per-op breakdown (with each op's bound)."""
    prov = p.provenance
    for line in header_lines(p):
        console.print(line, highlight=False, markup=False)
    table = Table(show_header=True, header_style="bold")
    table.add_column("metric", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    table.add_column("± band", justify="right", overflow="fold")
    for name, value, rel in metric_rows(p):
        table.add_row(name, value, f"±{rel:.0%}" if rel else "")
    console.print(table)
    if p.speculative:
        console.print(speculative_text(p.speculative), highlight=False, markup=False)
    split = time_split_text(p)
    if split:
        console.print(split, highlight=False, markup=False)
    console.print(prov.get("error_band_note") or "no error band", highlight=False, markup=False)
    table_note = moe_table_text(prov.get("moe_tile_table"), prediction_passes(p))
    if table_note:
        console.print(table_note, highlight=False, markup=False)
    spill_note = moe_l2_text(prov.get("moe_l2_spill"))
    if spill_note:
        console.print(spill_note, highlight=False, markup=False)
    ops = Table(title="per-op breakdown (whole pass, all layers)", header_style="bold")
    for col in ("pass", "op", "GFLOP", "GB moved", "time", "share", "bound", "of roof"):
        ops.add_column(col, justify="left" if col in ("pass", "op", "bound") else "right",
                       overflow="fold")
    for op in op_table_rows(p):
        ops.add_row(op["pass"], op["name"], f"{op['flops'] / 1e9:,.1f}", f"{op['bytes'] / 1e9:,.3f}",
                    format_time(op["time_s"]), f"{op['share']:.1%}", op["bound"], _of_roof(op["of_roof"]))
    console.print(ops)
    console.print(f"[dim]provenance: profile={prov['profile']} gpu={prov['gpu']} "
                  f"calibrated={prov['calibrated']} peaks={prov['peaks']}[/dim]")
    host = prov.get("host") or {}
    if host.get("probe_ms") is not None:
        console.print(f"[dim]host: probe {host['probe_ms']:.1f} ms against the profile's "
                      f"{host['reference_probe_ms']:.1f} ms: its host times x {host['factor']:.2f}[/dim]")
