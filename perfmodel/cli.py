"""The ``perfmodel`` command line: predict, formula, sweep, list (and the measuring side).

Bad input of any kind ends with one line on stderr and exit code 2, never a traceback.
Warnings (a workload that does not fit in memory, sweep points dropped) are one line each on
stderr, ``perfmodel: warning: ...``; ``predict --strict`` exits 1 after a prediction that
does not fit. ``--json`` prints one JSON object on stdout (strict JSON: null for a metric a
phase lacks; counts of parameters, bytes and GPUs as integers).
"""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer

from perfmodel.click_errors import ABORT, EXIT, USAGE_ERRORS
from perfmodel.errors import InputError, PerfModelError
from perfmodel.profile import DEFAULT_ENGINE

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode="markdown",  # a docstring's lines joined into paragraphs
                  help="Symbolic, calibrated performance model of MoE LLM inference.")


class PhaseName(str, Enum):
    request = "request"
    prefill = "prefill"
    decode = "decode"


class Quantity(str, Enum):
    flops = "flops"
    bytes = "bytes"
    weight_bytes = "weight_bytes"
    act_bytes = "act_bytes"
    kv_bytes = "kv_bytes"
    comm = "comm"
    params = "params"
    time = "time"


class ListWhat(str, Enum):
    models = "models"
    gpus = "gpus"
    engines = "engines"
    schemes = "schemes"
    tables = "tables"


GPU_OPTION = typer.Option("h200-sxm", "--gpu", help="GPU name or alias (perfmodel list gpus).")
_ENGINE = typer.Option(DEFAULT_ENGINE, "--engine", help="Engine profile (perfmodel list engines).")
_SET = typer.Option(None, "--set", help="Override a hyperparameter: KEY=VALUE (repeatable).")
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON object.")
_QUANT_HELP = ("Quantization scheme of the linear layers (perfmodel list schemes; specs/quantization.yaml), "
               "e.g. fp8, fp8-block, w4a16, mxfp4-moe; none: unquantized (--dtype fp8 = --quant fp8).")
_MOE_IMPL_HELP = ("Routed experts: fused (one fused-MoE block), staged (its GEMMs with the routing, "
                  "activation and top-k sum apart: vLLM's triton_unfused MXFP4 MoE, with --quant mxfp4-moe) "
                  "or unfused (a loop over touched experts).")
_PRUNE_EXPERTS = typer.Option(None, "--prune-experts", help="Drop this fraction R of the routed "
                              "experts, in [0, 1): E' = E - round(R*E).")
_PRUNE_FFN = typer.Option(None, "--prune-ffn", help="Narrow every routed expert's FFN by this "
                          "fraction R, in [0, 1): I' = I - round(R*I).")
_SPEC_DRAFT = typer.Option(None, "--spec-draft", help="Speculative decoding: the draft model "
                           "(zoo name or config.json).")
_SPEC_TOKENS = typer.Option(None, "--spec-tokens", help="Draft tokens per step (gamma, at least 1).")
_SPEC_ACCEPT = typer.Option(None, "--spec-accept", help="Acceptance rate of a draft token "
                            "(alpha, in [0, 1)).")
_SPEC_ACCEPTED_LEN = typer.Option(None, "--spec-accepted-len", help="Mean tokens per step, the "
                                  "target's own included (tau, in [1, gamma+1]); instead of --spec-accept.")

#: Width of the tables when stdout is not a terminal (a file, a pipe): wide enough that no
#: value is ever cut; a table takes only the width its cells need.
_FILE_WIDTH = 10_000


def make_console():
    """A rich console: the terminal's width on a terminal, else one that never cuts a value."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=_FILE_WIDTH)


#: The parallel degrees' help (:mod:`perfmodel.specs.layout`): GPUs used = tp·ep·pp.
_TP_HELP = "Tensor-parallel GPUs: heads and FFN widths split over them."
_EP_HELP = ("Expert-parallel groups of tp GPUs each, the routed experts split over them: GPUs = tp·ep·pp·dp "
            "(vLLM's --enable-expert-parallel, which reuses the tp GPUs, is --expert-parallel).")
_PP_HELP = "Pipeline stages: the layers split evenly over them."
_DP_HELP = ("Data-parallel ranks of tp GPUs (vLLM's --data-parallel-size), batch/dp sequences each, "
            "the MoE layers spanning them all: GPUs = tp·ep·pp·dp.")
_EXPERT_PARALLEL_HELP = ("vLLM's --enable-expert-parallel: whole routed experts over the tp·dp GPUs "
                         "(else their widths are split over them).")


def _warn(message: str) -> None:
    print(f"perfmodel: warning: {message}", file=sys.stderr)


def _warn_beyond_positions(model: str, overrides: list[str], result) -> None:
    """Warn where a sequence runs past the positions the model's config.json declares
    (``max_position_embeddings``): the prediction holds as if they reached that far."""
    from perfmodel.specs.model import load_model

    limit = load_model(model, overrides).max_position
    w = result.workload
    longest = {"request": w.input_len + w.output_len, "prefill": w.input_len,
               "decode": w.context if w.context is not None else w.input_len}[result.phase]
    if limit and longest > limit:
        _warn(f"a sequence reaches {longest:,} tokens, beyond the model's max_position_embeddings ({limit:,}): "
              "predicted as if its positions reached that far")


def _warn_beyond_one_node(result) -> None:
    """Say so when a layout takes more GPUs than one node of them holds: the model costs every link
    at the GPU's scale-up bandwidth, not the network between nodes."""
    gpu, gpus = result.gpu, result.workload.gpus
    if gpus > gpu.gpus_per_node:
        _warn(f"the layout's {gpus} GPUs span {-(-gpus // gpu.gpus_per_node)} nodes of {gpu.gpus_per_node} "
              f"{gpu.name}: every link is costed at its scale-up bandwidth, the network between nodes "
              "not modelled")


def _warn_unread(quant_method: str, how: str) -> None:
    """Warn that a config.json's checkpoint format is no scheme's (:attr:`ModelSpec.unread_quantization`),
    and, where schemes read that method in other forms, which."""
    from perfmodel.quantization import checkpoint_forms

    forms = checkpoint_forms(quant_method)
    read = f" (the schemes read {quant_method} as {'; '.join(forms)}: its other fields differ)" if forms else ""
    _warn(f"the config.json's quantization_config (quant_method '{quant_method}') is no scheme's{read}: {how}; "
          "--quant predicts it in a scheme (perfmodel list schemes)")


def print_json(data: Any) -> None:
    print(json.dumps(_strict_json(data), default=str, allow_nan=False))


def _version(value: bool) -> None:
    if value:
        from perfmodel import __version__  # from the installed distribution's metadata

        print(f"perfmodel {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Symbolic, calibrated performance model of MoE LLM inference."""


_HOST_PROBE = typer.Option(
    None, "--host-probe-ms", help="The host's speed: its probe time in ms (perfmodel host-probe "
    "times it on the serving host); the profile's host times are scaled to it. Default: the "
    "host the profile was fitted on.")
_GPU_MEMORY = typer.Option(
    None, "--gpu-memory-utilization", help="Share of each GPU's memory the engine may fill "
    "(vLLM's flag of that name; default the profile's, 0.9 for vllm).")


@app.command()
def predict(
    model: str = typer.Argument(..., help="Zoo name or path to a config.json."),
    gpu: str = GPU_OPTION,
    engine: str = _ENGINE,
    phase: PhaseName = typer.Option(PhaseName.request, "--phase"),
    batch: int = typer.Option(1, "--batch", "-b", help="Sequences in the batch (B)."),
    input_len: int = typer.Option(128, "--input-len", "-s", help="Input tokens per sequence (S)."),
    output_len: int = typer.Option(128, "--output-len", "-o", help="Output tokens per sequence (O)."),
    context: Optional[int] = typer.Option(None, "--context", "-l", help="Decode context L (default S)."),
    tp: int = typer.Option(1, "--tp", help=_TP_HELP),
    ep: int = typer.Option(1, "--ep", help=_EP_HELP),
    pp: int = typer.Option(1, "--pp", help=_PP_HELP),
    dp: int = typer.Option(1, "--dp", help=_DP_HELP),
    expert_parallel: bool = typer.Option(False, "--expert-parallel", help=_EXPERT_PARALLEL_HELP),
    dtype: str = typer.Option("bf16", "--dtype", help="Weights: fp32, bf16, fp16, fp8, int8, fp4."),
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype", help="KV cache dtype (default bf16/dtype)."),
    skew: float = typer.Option(0.0, "--skew", help="Routing skew in [0, 1] (0 = uniform)."),
    quant: Optional[str] = typer.Option(None, "--quant", help=_QUANT_HELP),
    moe_impl: str = typer.Option("fused", "--moe-impl", help=_MOE_IMPL_HELP),
    set_: Optional[List[str]] = _SET,
    prune_experts: Optional[float] = _PRUNE_EXPERTS,
    prune_ffn: Optional[float] = _PRUNE_FFN,
    spec_draft: Optional[str] = _SPEC_DRAFT,
    spec_tokens: Optional[int] = _SPEC_TOKENS,
    spec_accept: Optional[float] = _SPEC_ACCEPT,
    spec_accepted_len: Optional[float] = _SPEC_ACCEPTED_LEN,
    host_probe_ms: Optional[float] = _HOST_PROBE,
    gpu_memory_utilization: Optional[float] = _GPU_MEMORY,
    as_json: bool = JSON_OPTION,
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when the workload "
                                "does not fit in memory (always warned about on stderr)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write report.html (each op on the "
                                       "GPU's roofline, time by op) and summary.md into this folder."),
) -> None:
    """Predict TTFT, ITL, E2E, throughput and memory of one fixed-batch workload.

    A workload that does not fit in the GPU's usable memory is still predicted (exit 0) with a
    warning on stderr; with --strict it exits 1.
    """
    from perfmodel.prediction import predict as run

    if out is not None:
        from perfmodel.templating import check_out_dir

        check_out_dir(out)

    arguments = dict(model=model, gpu=gpu, engine=engine, phase=phase.value, batch=batch, input_len=input_len,
                     output_len=output_len, context=context, tp=tp, ep=ep, pp=pp, dp=dp,
                     expert_parallel=expert_parallel, dtype=dtype, kv_dtype=kv_dtype,
                     skew=skew, overrides=set_ or [], quant=quant, moe_impl=moe_impl, prune_experts=prune_experts,
                     prune_ffn=prune_ffn, spec_draft=spec_draft, spec_tokens=spec_tokens, spec_accept=spec_accept,
                     spec_accepted_len=spec_accepted_len, host_probe_ms=host_probe_ms,
                     gpu_memory_utilization=gpu_memory_utilization)
    result = run(**arguments)
    fits = bool(result.metrics["fits_in_memory"])
    if not fits:
        from perfmodel.fit_hint import ways_to_fit

        ways = ways_to_fit(arguments)
    report = None
    if out is not None:
        from perfmodel.prediction_report import write_report

        report = [str(path) for path in write_report(result, out)]
    if as_json:
        from perfmodel.report_terminal import time_split

        print_json({**result.to_dict(), "time_split": time_split(result), **({"report": report} if report else {}),
                    **({} if fits else {"fits_with": ways})})
    else:
        from perfmodel.report_terminal import print_prediction

        print_prediction(result, make_console())
        if report:
            print(f"report: {report[0]}  markdown: {report[1]}")
    unread = result.provenance.get("unread_quantization")
    if unread is not None:
        _warn_unread(unread, f"predicted unquantized at --dtype {result.workload.dtype}")
    _warn_beyond_positions(model, set_ or [], result)
    _warn_beyond_one_node(result)
    m = result.metrics
    if not fits:
        from perfmodel.fit_hint import hint_text

        gib = 2**30
        fixed, one = m["weights_bytes"] + m["activation_bytes"], m["kv_cache_bytes"] / result.workload.batch
        why = (f": not even one sequence fits (weights and activations {fixed / gib:.2f} GiB, one "
               f"sequence's KV cache {one / gib:.2f} GiB)" if result.phase == "request" else "")
        _warn(f"does not fit: needs {m['memory_bytes'] / gib:.2f} GiB per GPU of "
              f"{m['memory_capacity_bytes'] / gib:.2f} GiB usable on {result.provenance['gpu']}{why}"
              f"{hint_text(ways)}")
        if strict:
            sys.exit(1)


def _strict_json(value: Any) -> Any:
    """NaN and infinities (a metric a phase does not have) as null: json.dumps would write
    NaN, which is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


@app.command()
def formula(
    model: str = typer.Argument(..., help="Zoo name or path to a config.json."),
    op: str = typer.Option(..., "--op", help="Op name (e.g. moe.experts), 'launch' (the host's launch "
                           "floor of a prefill, per pass: --quantity time), or 'list'."),
    quantity: Quantity = typer.Option(Quantity.flops, "--quantity"),
    phase: PhaseName = typer.Option(PhaseName.prefill, "--phase", help="prefill or decode (a formula is "
                                    "one pass's)."),
    latex: bool = typer.Option(False, "--latex", help="Print LaTeX (with --json: also under 'latex')."),
    set_: Optional[List[str]] = _SET,
    batch: int = typer.Option(1, "--batch", "-b", help="B of the value printed last."),
    input_len: int = typer.Option(128, "--input-len", "-s", help="S of the value (prefill)."),
    context: Optional[int] = typer.Option(None, "--context", "-l", help="L of the value (decode; default S)."),
    gpu: str = GPU_OPTION,
    engine: str = typer.Option(DEFAULT_ENGINE, "--engine", help="Engine profile of a time's value."),
    quant: Optional[str] = typer.Option(None, "--quant", help=_QUANT_HELP + " Default: the checkpoint's."),
    moe_impl: str = typer.Option("fused", "--moe-impl", help=_MOE_IMPL_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Print an op's cost formula: symbolic, per phase, with the model's numbers, and its value.

    The value is per layer at --batch and --input-len (prefill) or --context (decode); a time
    is on --gpu under --engine. The layers are stored as the model's checkpoint stores them
    (gpt-oss: MXFP4 experts), as predict takes them, unless --quant says otherwise. The op is
    the one --engine runs, as predict builds it (vllm: expert rows padded to the fused-MoE
    kernel's tiles; --engine roofline: every row as it is). The formula is one data-parallel
    rank's, with the experts' load even over their GPUs (predict --dp / --expert-parallel add those
    terms).
    """
    from perfmodel.formula_text import op_formula, op_formula_data

    args = (model, op, quantity.value, phase.value)
    workload = dict(batch=batch, input_len=input_len, context=context, gpu=gpu, engine=engine,
                    quant=quant, moe_impl=moe_impl)
    if as_json:
        print_json(op_formula_data(*args, set_ or [], latex, **workload))
        return
    print("\n".join(op_formula(*args, latex, set_ or [], **workload)))


def _committed_profiles() -> list:
    """Every profile file of the calibration folder, loaded, in name order."""
    from perfmodel.paths import PROFILES_DIR
    from perfmodel.profile import load_profile_file

    return [load_profile_file(path) for path in sorted(PROFILES_DIR.glob("*.yaml"))]


def _measured_models() -> dict[str, list[dict[str, Any]]]:
    """Per model, the calibrated profiles whose fit compared it with committed one-GPU rows (the
    model as built and its variants): the profile, its GPU and engine, and the points it was
    fitted on (``train``) and checked on (``held_out``), from each profile's
    ``fit.residuals.models`` (:func:`perfmodel.calibration.fit.held_out_residuals`)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for profile in _committed_profiles():
        for model, counts in profile.residuals("models").items():
            out.setdefault(model, []).append({"profile": profile.name, "gpu": profile.gpu, "engine": profile.engine,
                                              "train": int(counts.get("train", 0)),
                                              "held_out": int(counts.get("held-out", 0))})
    return out


def _list_data(what: ListWhat) -> list[dict[str, Any]]:
    """The models, GPUs or engines (each with its profiles) as JSON-ready objects."""
    if what is ListWhat.models:
        from perfmodel.specs.zoo import zoo, zoo_names

        measured = _measured_models()
        return [{"name": name, "model_type": zoo()[name].config["model_type"],
                 "display_name": zoo()[name].display_name, "aliases": list(zoo()[name].aliases),
                 "source": zoo()[name].source, "measured": measured.get(name, [])} for name in zoo_names()]
    if what is ListWhat.gpus:
        from perfmodel.profile import list_engines, load_profile
        from perfmodel.specs.hardware import gpu_catalog

        gpus = sorted({g.name: g for g in gpu_catalog().values()}.values(), key=lambda g: g.name)
        engines = [e for e in list_engines() if any(load_profile(e, g.name).calibrated for g in gpus)]

        def profiles(gpu):  # per calibrated engine: the profile a prediction on this GPU takes, and whence
            taken = {e: load_profile(e, gpu) for e in engines}
            return {e: {"profile": p.name, "fitted_on": p.gpu, "fitted_here": p.gpu == gpu,
                        "anchored_on": ((p.fit or {}).get("anchor") or {}).get("gpu"),
                        "band": p.error_band is not None and p.gpu == gpu} for e, p in taken.items()}

        return [{**gpu.model_dump(mode="json"), "profiles": profiles(gpu.name)} for gpu in gpus]
    from perfmodel.profile import list_engines

    profiles = _committed_profiles()
    if what is ListWhat.tables:
        from perfmodel.moe_tables import load_tables, zoo_shapes

        def entry(table):  # its zoo models; per profile with the factor: it, and whether this table's A/B gave
            shapes = zoo_shapes(table)  # it; the profiles whose factor is another scheme's tables'; and
            # the profiles that timed the table against the default rule, whose timing replaces the factor
            factors, other_schemes = {}, {}
            for p in profiles:
                if p.gpu != table.gpu or p.options.moe_off_table_memory is None:
                    continue
                schemes = p.options.moe_off_table_schemes
                if schemes is not None and table.scheme not in schemes:
                    other_schemes[p.name] = list(schemes)
                    continue
                a_b = ((p.fit or {}).get("moe_off_table") or {}).get("models", [])
                factors[p.name] = {"memory_factor": p.options.moe_off_table_memory,
                                   "measured": any(name in a_b and tp == 1 for name, tp in shapes)}
            timed = {}  # per profile, over the top-k it was timed at
            for p in profiles:
                found = [t for t in (p.options.moe_table_extra or ()) if p.gpu == table.gpu
                         and (t.experts, t.width, t.scheme) == (table.experts, table.width, table.scheme)]
                if found:
                    extra = [x for t in found for x in t.extra_s]
                    timed[p.name] = {"passes": max(len(t.tokens) for t in found),
                                     "top_k": sorted({t.top_k for t in found if t.top_k is not None}),
                                     "extra_us": [round(1e6 * min(extra), 1), round(1e6 * max(extra), 1)]}
            factors = {name: f for name, f in factors.items() if name not in timed}  # the timing replaces it
            return {**table.model_dump(), "models": [f"{name} (tp {tp})" for name, tp in shapes], "profiles": factors,
                    "no_factor": {name: s for name, s in other_schemes.items() if name not in timed},
                    "timed": timed}

        return [entry(table) for table in load_tables()]
    if what is ListWhat.schemes:
        from perfmodel.quantization import load_schemes

        # per scheme, the calibrated profiles that measured it: whether its held-out rows carry the
        # band, and where not, whether they give their own (fit.residuals.quantization.<scheme>.own_band);
        # and those that served it: how many held-out serving runs, within the serving band or not
        def served(name):
            checks = ((p.name, p.serving_error_band.schemes.get(name)) for p in profiles if p.serving_error_band)
            return {profile: {"runs": c.runs, "band": c.within, "own_band": c.own_band}
                    for profile, c in checks if c is not None}

        return [{**scheme.model_dump(mode="json", include={
                     "name", "aliases", "dtype_alias", "weight_bits", "compute", "layers", "checkpoints",
                     "description"}),
                 "measured": {p.name: {"band": bool(p.quantization[scheme.name].band),
                                       "own_band": bool(p.residuals("quantization").get(scheme.name, {}).get("own_band"))}
                              for p in profiles if p.calibrated and scheme.name in p.quantization
                              and not p.quantization[scheme.name].carried_from},
                 "served": served(scheme.name)}
                for scheme in load_schemes().values()]
    return [{"engine": engine, "profiles": [
        {"name": p.name, "gpu": p.gpu, "calibrated": p.calibrated, "peaks": p.peaks,
         "error_band": p.error_band.model_dump() if p.error_band else None,
         "description": p.description} for p in profiles if p.engine == engine]}
        for engine in list_engines()]


@app.command("host-probe")
def host_probe(
    engine: str = _ENGINE,
    gpu: str = GPU_OPTION,
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Time the probe back to back for "
                                            "this long and describe its spread (the slow state, how "
                                            "long it lasts, whether cores switch together)."),
    workers: int = typer.Option(1, "--workers", help="With --seconds: processes timing it at once."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --seconds: write every sample here (JSON)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Time this host's probe, the input --host-probe-ms takes.

    The probe is a fixed pure-Python loop (ms, best of three); the factor it puts on the
    profile's host times is printed beside it. With --seconds, its spread over time."""
    from perfmodel.host_speed import host_factor, probe_ms as probe
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu

    profile = load_profile(engine, load_gpu(gpu).name)
    ref = profile.latency.host_probe_ref_ms
    if seconds is not None:
        _host_trace(seconds, workers, out, profile, as_json)
        return
    if out is not None or workers != 1:
        raise InputError("--workers and --out apply with --seconds")
    ms = probe()
    factor = host_factor(profile, ms) if ref is not None else None
    if as_json:
        print_json({"host_probe_ms": ms, "profile": profile.name, "reference_probe_ms": ref,
                    "host_factor": factor})
    elif factor is None:
        print(f"host probe {ms:.1f} ms (profile {profile.name} does not take the host's speed)")
    else:
        print(f"host probe {ms:.1f} ms; profile {profile.name} was fitted at {ref:.1f} ms: "
              f"its host times x {factor:.2f} here (--host-probe-ms {ms:.1f})")


def check_writable(path: Path) -> None:
    """Refuse (:class:`InputError`, one line) an output file path that cannot be written as a file:
    a folder (or an empty path), or one whose folder does not exist or is a file."""
    if str(path) in ("", ".") or path.is_dir():
        raise InputError(f"cannot write '{path}': it is a folder, not a file")
    if not path.parent.is_dir():
        problem = "is not a folder" if path.parent.exists() else "does not exist"
        raise InputError(f"cannot write {path}: folder '{path.parent}' {problem}")


def _host_trace(seconds: float, workers: int, out: Optional[Path], profile, as_json: bool) -> None:
    """``host-probe --seconds``: the trace's summary (and every sample in ``out``)."""
    import json

    from perfmodel.host_speed import host_factor
    from perfmodel.host_trace import as_rows, summarize, trace

    if out is not None:
        check_writable(out)
    samples = trace(seconds, workers)
    summary = summarize(samples)
    if profile.latency.host_probe_ref_ms is not None:
        summary["host_factor"] = {k: round(host_factor(profile, summary["probe_ms"][k]), 3)
                                  for k in ("p10", "p50", "p90", "mean")}
    if out is not None:
        try:
            out.write_text(json.dumps({"summary": summary, "samples": as_rows(samples)}) + "\n")
        except OSError as exc:
            raise InputError(f"cannot write {out}: {exc.strerror or exc}") from None
    if as_json:
        print_json(summary)
        return
    p = summary["probe_ms"]
    runs = summary["slow_runs_s"]
    print(f"{summary['samples']} samples over {summary['seconds']} s in {summary['workers']} process(es): "
          f"probe p10 {p['p10']:.1f} / p50 {p['p50']:.1f} / p90 {p['p90']:.1f} ms, mean {p['mean']:.1f} ms")
    print(f"slow (>= {summary['slow_threshold_ms']:.1f} ms) {summary['slow_share']:.0%} of samples, "
          f"{runs['count']} runs (median {runs['median']} s, longest {runs['longest']} s), "
          f"{summary['switches_per_minute']} switches per minute"
          + (f"; processes agree {summary['workers_agree']:.0%} of the time" if summary["workers_agree"] is not None else ""))
    if "host_factor" in summary:
        f = summary["host_factor"]
        print(f"host times x {f['p10']:.2f} / {f['p50']:.2f} / {f['p90']:.2f} at p10 / p50 / p90 "
              f"(profile {profile.name}, reference {profile.latency.host_probe_ref_ms:.1f} ms); "
              f"x {f['mean']:.2f} at the mean, the speed the serving band's runs are replayed at "
              f"(--host-probe-ms {p['mean']:.1f})")


def _band_word(check: dict[str, Any]) -> str:
    """How a scheme's held-out rows or serving runs take a profile's band, as ``list schemes`` prints it."""
    return "band" if check["band"] else "own band" if check["own_band"] else "no band"


def _whence(profile: dict[str, Any]) -> str:
    """Where a GPU's profile of an engine comes from (:func:`_list_data`'s ``profiles``), in words."""
    if not profile["fitted_here"]:
        return f"carried from {profile['fitted_on']}, no band"
    anchored = f" (anchored on {profile['anchored_on']})" if profile["anchored_on"] else ""
    return f"fitted{anchored}" + ("" if profile["band"] else ", no band")


@app.command("list")
def list_(what: ListWhat = typer.Argument(..., help="models, gpus, engines, schemes or tables"),
          as_json: bool = JSON_OPTION) -> None:
    """List the zoo's models, the known GPUs, the engine profiles, the quantization schemes
    (with the checkpoint formats each reads, and the profiles that measured it) or vLLM's tuned
    fused-MoE tile tables that start above small passes (the zoo models whose experts meet each,
    and the profiles that measured the factor on the experts' memory time)."""
    items = _list_data(what)
    if as_json:
        print_json({what.value: items})
    elif what is ListWhat.models:
        for m in items:
            aliases = f"  (also: {', '.join(m['aliases'])})" if m["aliases"] else ""
            measured = "; ".join(f"{e['gpu']} {e['engine']} " + ", ".join(
                f"{n} {label}" for n, label in ((e["held_out"], "held out"), (e["train"], "fitted on")) if n)
                for e in m["measured"]) or "not measured"
            print(f"{m['name']:24s} {m['model_type']:12s} {m['display_name']}{aliases}  [{measured}]")
    elif what is ListWhat.gpus:
        for gpu in items:
            aliases = f"  (also: {', '.join(gpu['aliases'])})" if gpu["aliases"] else ""
            fits = "; ".join(f"{engine} {_whence(p)}" for engine, p in gpu["profiles"].items())
            print(f"{gpu['name']:16s} bf16 {gpu['peak_tflops'].get('bf16', 0):7.1f} TFLOP/s  "
                  f"{gpu['hbm_bandwidth_tb_s']:5.2f} TB/s  {gpu['hbm_capacity_gib']:6.1f} GiB  {gpu['full_name']}"
                  f"{aliases}  [{fits}]")
    elif what is ListWhat.schemes:
        for s in items:
            bits = f"{s['weight_bits']}-bit" if s["weight_bits"] else "-"
            formats = ", ".join(c["quant_method"] for c in s["checkpoints"]) or "-"
            measured = ", ".join(f"{name} ({_band_word(m)})" for name, m in s["measured"].items()) or "not measured"
            served = "".join(f"; served: {name} ({m['runs']} runs, {_band_word(m)})" for name, m in s["served"].items())
            print(f"{s['name']:16s} {bits:6s} {s['compute']:11s} checkpoints: {formats:32s} {measured}{served}")
    elif what is ListWhat.tables:
        for t in items:
            models = ", ".join(t["models"]) or "no zoo model"
            measured = ", ".join([f"{name}: timed at {f['passes']} passes, {f['extra_us'][0]:+.0f} to "
                                  f"{f['extra_us'][1]:+.0f} us per layer" for name, f in t["timed"].items()]
                                 + [f"{name}: memory x {f['memory_factor']:.2f}, "
                                    f"{'measured on it' if f['measured'] else 'assumed'}"
                                    for name, f in t["profiles"].items()]
                                 + [f"{name}: no factor, its A/B ran {'/'.join(schemes)} tables"
                                    for name, schemes in t["no_factor"].items()]) or "no profile measured the factor"
            print(f"{t['gpu']:10s} E={t['experts']:<4d} N={t['width']:<5d} {t['scheme']:9s} from {t['from_tokens']:4d} "
                  f"tokens  {models}  ({measured})")
    else:
        for e in items:
            fitted = ", ".join(f"{p['name']} ({'calibrated' if p['calibrated'] else 'uncalibrated'}"
                               f"{', band' if p['error_band'] else ''})" for p in e["profiles"])
            print(f"{e['engine']:10s} {fitted}")


@app.command()
def sweep(
    model: str = typer.Argument(..., help="Zoo name or path to a config.json; several, comma-separated, "
                                "sweep the grid for each (a model column)."),
    grid: List[str] = typer.Option(..., "--grid", help="KEY=V1,V2,... (repeatable, each KEY once)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU name or alias (default h200-sxm)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="Engine profile (default vllm)."),
    phase: PhaseName = typer.Option(PhaseName.request, "--phase"),
    batch: Optional[int] = typer.Option(None, "--batch", "-b", help="B (default 1)."),
    input_len: Optional[int] = typer.Option(None, "--input-len", "-s", help="S (default 128)."),
    output_len: Optional[int] = typer.Option(None, "--output-len", "-o", help="O (default 128)."),
    context: Optional[int] = typer.Option(None, "--context", "-l", help="Decode context L (default S)."),
    tp: Optional[int] = typer.Option(None, "--tp", help=_TP_HELP),
    ep: Optional[int] = typer.Option(None, "--ep", help=_EP_HELP),
    pp: Optional[int] = typer.Option(None, "--pp", help=_PP_HELP),
    dp: Optional[int] = typer.Option(None, "--dp", help=_DP_HELP),
    expert_parallel: Optional[bool] = typer.Option(None, "--expert-parallel", help=_EXPERT_PARALLEL_HELP),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Weights dtype (default bf16)."),
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype"),
    skew: Optional[float] = typer.Option(None, "--skew"),
    quant: Optional[str] = typer.Option(None, "--quant", help=_QUANT_HELP),
    moe_impl: Optional[str] = typer.Option(None, "--moe-impl", help=_MOE_IMPL_HELP),
    set_: Optional[List[str]] = _SET,
    prune_experts: Optional[float] = _PRUNE_EXPERTS,
    prune_ffn: Optional[float] = _PRUNE_FFN,
    spec_draft: Optional[str] = _SPEC_DRAFT,
    spec_tokens: Optional[int] = _SPEC_TOKENS,
    spec_accept: Optional[float] = _SPEC_ACCEPT,
    spec_accepted_len: Optional[float] = _SPEC_ACCEPTED_LEN,
    host_probe_ms: Optional[float] = _HOST_PROBE,
    gpu_memory_utilization: Optional[float] = _GPU_MEMORY,
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the table to a CSV file."),
    as_json: bool = JSON_OPTION,
    max_points: Optional[int] = typer.Option(
        None, "--max-points", help="Refuse a grid of more combinations than this (default 10,000,000)."),
    sort: Optional[str] = typer.Option(
        None, "--sort", help="Order the rows by a column of the table, largest first with a leading '-' "
        "(e.g. -throughput_per_gpu_tok_s); the grid's order otherwise."),
    baseline: Optional[str] = typer.Option(
        None, "--baseline", help="KEY=VALUE of a swept key: add each row's change in % against the row "
        "that has VALUE there and every other key alike (columns <metric>_vs_base_pct), e.g. quant=none."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write report.html (each metric against "
                                       "the first swept key) and summary.md into this folder."),
) -> None:
    """Evaluate a grid of workloads and hyperparameters (vectorized).

    A key is given once: swept by --grid, or fixed by its flag or --set. Combinations that
    predict would refuse are dropped, with a warning on stderr saying how many and why.
    What-ifs sweep too: --grid prune_experts=0,0.25,0.5, --grid spec_draft=none,qwen3-1.7b,
    --grid spec_tokens=1,3,5, --grid spec_accept=0.5,0.7,0.9. Several models, comma-separated,
    sweep the same grid each; --baseline quant=none gives each row's change against the
    unquantized row (model=NAME against a model); --sort -throughput_per_gpu_tok_s puts the best first.
    """
    from perfmodel.prediction import check_overrides
    from perfmodel.sweeps import NO_DRAFT, parse_grid, sweep as run

    fixed = {k: v for k, v in dict(batch=batch, input_len=input_len, output_len=output_len,
                                   context=context, tp=tp, ep=ep, pp=pp, dp=dp,
                                   expert_parallel=expert_parallel, dtype=dtype,
                                   kv_dtype=kv_dtype, skew=skew, quant=quant, moe_impl=moe_impl,
                                   prune_experts=prune_experts,
                                   prune_ffn=prune_ffn, spec_draft=spec_draft, spec_tokens=spec_tokens,
                                   spec_accept=spec_accept, spec_accepted_len=spec_accepted_len,
                                   host_probe_ms=host_probe_ms).items() if v is not None}
    if csv is not None:
        check_writable(csv)
    if out is not None:
        from perfmodel.templating import check_out_dir

        check_out_dir(out)
    overrides = check_overrides(set_ or [])
    limit = {} if max_points is None else {"max_points": max_points}
    axes = parse_grid(grid)
    models = [m.strip() for m in model.split(",")] if "," in model and not Path(model).exists() else [model]
    if not all(models):
        raise InputError(f"bad model list '{model}': an empty name between commas")
    if len(models) > 1:  # the lines of the report's charts: one per model
        axes = {**dict(list(axes.items())[:1]), "model": models, **dict(list(axes.items())[1:])}
    if baseline is not None:
        from perfmodel.sweep_change import parse_baseline

        base_key, base_value = parse_baseline(baseline, axes)
    table = run(model, axes, gpu=gpu, engine=engine, phase=phase.value, overrides=overrides,
                gpu_memory_utilization=gpu_memory_utilization, **limit, **fixed)
    if baseline is not None:
        from perfmodel.sweep_change import with_changes

        table = with_changes(table, list(axes), base_key, base_value)
        base = table.attrs["baseline"]
        if not base["rows"]:
            _warn(f"no row of the baseline ({baseline}) is left, each a combination predict refuses: "
                  "the changes are empty")
        elif base["misfits"]:
            _warn(f"{base['misfits']:,} of the {base['rows']:,} baseline rows ({baseline}) do not fit in memory: "
                  "the changes against them compare with a configuration that would not run")
    if "quant" not in fixed and "quant" not in axes:  # rows at a dtype no scheme aliases run unquantized
        from perfmodel.quantization import dtype_aliases
        from perfmodel.specs.model import load_model

        plain = [str(d) for d in axes.get("dtype", [fixed.get("dtype", "bf16")]) if str(d) not in dtype_aliases()]
        for name in models:
            unread = load_model(name, set_ or []).unread_quantization
            if unread is not None and plain:
                _warn_unread(unread, f"its rows at --dtype {', '.join(plain)} predicted unquantized"
                             + (f" ({name})" if len(models) > 1 else ""))
    if sort is not None:
        table = _sorted(table, sort)
    dropped = table.attrs.get("dropped") or {}
    if dropped.get("count"):
        _warn(f"dropped {dropped['count']:,} of {dropped['of']:,} combinations that predict "
              f"refuses ({'; '.join(dropped['reasons'])})")
    misfits = int((~table["fits_in_memory"]).sum())
    if misfits:
        _warn(f"{misfits:,} of {len(table):,} rows do not fit in memory (fits_in_memory False)")
    import numpy as np

    numbers = table.select_dtypes("number")
    # a column a kind of row has no value in (the speculative columns of rows without a draft, and
    # the other way round; a metric the phase has none of) is empty there by design
    speculative = (table["spec_draft"] != NO_DRAFT).to_numpy() if "spec_draft" in table else None
    broken = []
    for c in numbers.columns:
        values = numbers[c].to_numpy(dtype=float)
        missing = np.isnan(values)
        by_design = missing.all() or (speculative is not None and (
            np.array_equal(missing, speculative) or np.array_equal(missing, ~speculative)))
        if np.isinf(values).any() or (missing.any() and not by_design):
            broken.append(c)
    if broken:
        _warn(f"some rows hold a number that is not finite ({', '.join(broken)}): a formula met a value it "
              "does not cover there")
    in_waves = int((table["kv_waves"] > 1).sum()) if "kv_waves" in table else 0
    if in_waves:
        _warn(f"{in_waves:,} of {len(table):,} rows outgrow the KV cache (kv_waves > 1): their E2E and "
              "throughput are vLLM's schedule of the batch, its preempted requests recomputed (kv_preemptions)")
    from perfmodel.prediction import Workload
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model

    swept_gpus = ", ".join(load_gpu(str(g)).name for g in axes["gpu"]) if "gpu" in axes else None
    # the workload a row stands at, defaults included, where the grid does not set it
    shape = {k: v for k, v in {"batch": Workload.batch, "input_len": Workload.input_len,
                               "output_len": Workload.output_len, **fixed}.items() if k not in axes}
    header = {"model": ", ".join(load_model(name, overrides).name for name in models),
              "gpu": swept_gpus or load_gpu(gpu or "h200-sxm").name, "engine": engine or DEFAULT_ENGINE,
              "phase": phase.value, "fixed": shape, "overrides": overrides}
    if baseline is not None:
        from perfmodel.sweep_change import change_band

        gpus = [load_gpu(str(g)).name for g in axes["gpu"]] if "gpu" in axes else [header["gpu"]]
        header["baseline"] = {"key": base_key, "value": base_value,
                              "change_band": change_band(base_key, gpus, header["engine"])}
    if csv is not None:
        constant = {"model": header["model"], "engine": header["engine"], "phase": header["phase"],
                    **({} if swept_gpus else {"gpu": header["gpu"]}), **shape}
        try:  # each row stands alone: what the header says of every row is a column too
            table.assign(**{k: v for k, v in constant.items() if k not in table.columns}).to_csv(csv, index=False)
        except OSError as exc:
            raise InputError(f"cannot write {csv}: {exc.strerror or exc}") from None
    report = None
    if out is not None:
        from perfmodel.sweep_report import write_report

        report = [str(path) for path in write_report(table, list(axes), header, out)]
    if as_json:
        print_json({**header, "dropped": dropped, "rows": _records(table), **({"report": report} if report else {})})
    elif csv is not None:
        print(f"wrote {len(table)} rows to {csv}")
    else:
        from perfmodel.report_terminal import sweep_header

        print(sweep_header(header))
        print(table.to_string(index=False, max_rows=60))
    if report and not as_json:
        print(f"report: {report[0]}  markdown: {report[1]}")


def _sorted(table, sort: str):
    """``table``'s rows ordered by the column ``sort`` names (``-name``: largest first), ties in
    the grid's order, NaN last; a name that is no column is refused with the columns it may be."""
    column = sort.strip()
    descending = column.startswith("-")
    column = column.lstrip("-").strip()
    if column not in table.columns:
        raise InputError(f"--sort {sort}: no such column (columns: {', '.join(map(str, table.columns))})")
    out = table.sort_values(column, ascending=not descending, kind="stable", na_position="last")
    out.attrs = dict(table.attrs)
    return out


def _records(table) -> list[dict[str, Any]]:
    """A sweep's rows as JSON-ready objects: integer columns and counts (parameters, bytes,
    GPUs) as ints, NaN as None, flags as bools."""
    import numpy as np

    from perfmodel.prediction import COUNT_METRICS

    columns: dict[str, list[Any]] = {}
    for name in table.columns:
        values = table[name].to_numpy()
        if name in COUNT_METRICS:
            values = np.where(np.isfinite(values), np.rint(values), np.nan)
            columns[name] = [int(v) if v == v else None for v in values.tolist()]
        else:
            columns[name] = [None if isinstance(v, float) and v != v else v for v in values.tolist()]
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


#: The optional libraries a measuring command imports, and the extra of pyproject.toml that brings each.
GPU_EXTRAS = {"torch": "gpu", "transformers": "gpu", "triton": "gpu", "vllm": "vllm"}


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; any bad input becomes one line on stderr and exit code 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--out=" or (a == "--out" and i + 1 < len(args) and not args[i + 1].strip())
           for i, a in enumerate(args)):  # Path("") is the current folder: never what was meant
        _fail("--out is empty: give a file or folder")
    try:
        app(args=argv, prog_name="perfmodel", standalone_mode=False)
    except EXIT as exc:
        sys.exit(exc.exit_code)
    except USAGE_ERRORS as exc:  # usage errors; no arguments at all (help already printed)
        # typer's choices are checked by pydantic, whose reason starts "Value error, "
        _fail((exc.format_message() or "missing command (see 'perfmodel --help')").replace("Value error, ", ""))
    except ABORT:
        _fail("aborted", code=130)
    except PerfModelError as exc:
        _fail(str(exc))
    except ModuleNotFoundError as exc:
        extra = GPU_EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        _fail(f"this command needs {exc.name}, which is not installed here (pip install 'perfmodel[{extra}]' "
              "on the GPU machine; replays of committed measurements need neither)")
    except KeyboardInterrupt:
        _fail("interrupted", code=130)


def _fail(message: str, code: int = 2) -> None:
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"perfmodel: error: {line}", file=sys.stderr)
    sys.exit(code)
