"""``perfmodel plan``: the cheapest deployment that meets latency targets at a request rate.

Exit status: 0 with an answer; 1 when no configuration meets every SLO (one line on stderr
says what failed closest, after the JSON and the report); 2 on bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from perfmodel.errors import InputError


def _csv(value: Optional[str], flag: str) -> Optional[list[str]]:
    """A flag's comma-separated values; an empty value (between commas, or none at all) or one
    given twice is one line naming the flag."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if not all(items):
        raise InputError(f"{flag} '{value}': an empty value between commas" if any(items)
                         else f"{flag} needs at least one value")
    repeated = sorted({v for v in items if items.count(v) > 1})
    if repeated:
        raise InputError(f"{flag} '{value}' gives {', '.join(repeated)} more than once")
    return items


def _ints(value: Optional[str], flag: str) -> Optional[list[int]]:
    items = _csv(value, flag)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise InputError(f"{flag} takes whole numbers separated by commas, got '{value}'") from None


def _overrides(**flags: Any) -> dict[str, Any]:
    """The flags given, as the nested fields of a PlanQuestion."""
    from perfmodel.planning.question import parse_length

    sections: dict[str, dict[str, Any]] = {"traffic": {}, "slo": {}, "search": {}, "simulation": {}}
    out: dict[str, Any] = {}
    f = flags
    if f["model"] is not None:
        out["model"] = f["model"]
    if f["set_"]:
        out["set"] = list(f["set_"])
    for key in ("engine", "prices", "host_probe_ms"):
        if f.get(key) is not None:
            out[key] = f[key]
    if f["rate"] is not None:
        sections["traffic"]["rate"] = f["rate"]
    if f["burstiness"] is not None:
        sections["traffic"]["burstiness"] = f["burstiness"]
    if f["input_len"] is not None:
        sections["traffic"]["input_len"] = parse_length(f["input_len"], "--input-len")
    if f["output_len"] is not None:
        sections["traffic"]["output_len"] = parse_length(f["output_len"], "--output-len")
    if f["lengths_file"] is not None:
        sections["traffic"]["lengths_file"] = f["lengths_file"]
    for key in ("ttft_p50", "ttft_p90", "ttft_p99", "itl_p50", "itl_p90", "itl_p99", "e2e_p90"):
        if f[key] is not None:
            sections["slo"][key] = f[key]
    search = sections["search"]
    if f["gpu"] is not None:
        search["gpus"] = _csv(f["gpu"], "--gpu")
    if f["dtype"] is not None:
        search["dtypes"] = _csv(f["dtype"], "--dtype")
    if f["max_num_seqs"] is not None:
        search["max_num_seqs"] = _ints(f["max_num_seqs"], "--max-num-seqs")
    for key in ("max_gpus", "max_batched_tokens", "kv_link_gb_s", "gpu_memory_utilization", "kv_cache_memory_gib"):
        if f[key] is not None:
            search[key] = f[key]
    if f["kv_dtype"] is not None:  # one KV-cache dtype, or several to search
        kv = _csv(f["kv_dtype"], "--kv-dtype")
        search["kv_dtype"] = kv[0] if len(kv) == 1 else kv
    for key in ("disaggregation", "expert_parallel"):
        if f[key] is not None:
            search[key] = f[key]
    for key in ("requests", "seed"):
        if f[key] is not None:
            sections["simulation"][key] = f[key]
    out.update({k: v for k, v in sections.items() if v})
    return out


def plan(
    model: Optional[str] = typer.Argument(None, help="Zoo name or config.json (or 'model:' in --config)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file holding the whole question."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Arrival rate, requests/s (Poisson unless --burstiness)."),
    burstiness: Optional[float] = typer.Option(
        None, "--burstiness", help="Shape of the gamma-distributed gaps between arrivals, as vllm bench "
                                   "serve's: 1 (default) Poisson, below 1 burstier, above 1 steadier."),
    input_len: Optional[str] = typer.Option(None, "--input-len", "-s",
                                            help="Prompt tokens: N, or percentiles p50=512,p90=4096."),
    output_len: Optional[str] = typer.Option(None, "--output-len", "-o",
                                             help="Output tokens: N, or percentiles p50=128,p90=1024."),
    lengths_file: Optional[Path] = typer.Option(None, "--lengths-file", help="CSV of input,output token counts."),
    ttft_p50: Optional[float] = typer.Option(None, "--ttft-p50", help="TTFT target, s."),
    ttft_p90: Optional[float] = typer.Option(None, "--ttft-p90", help="TTFT target, s."),
    ttft_p99: Optional[float] = typer.Option(None, "--ttft-p99", help="TTFT target, s."),
    itl_p50: Optional[float] = typer.Option(None, "--itl-p50", help="Inter-token latency target, s."),
    itl_p90: Optional[float] = typer.Option(None, "--itl-p90", help="Inter-token latency target, s."),
    itl_p99: Optional[float] = typer.Option(None, "--itl-p99", help="Inter-token latency target, s."),
    e2e_p90: Optional[float] = typer.Option(None, "--e2e-p90", help="End-to-end latency target, s."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU types to consider, comma-separated "
                                      "(default h100-sxm,h200-sxm)."),
    max_gpus: Optional[int] = typer.Option(None, "--max-gpus", help="Most GPUs in all (default 64)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Weight dtypes or quantization schemes, comma-separated (default bf16; e.g. bf16,fp8,w4a16)."),
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype", help="KV cache dtype, e.g. fp8, or several to "
                                           "search, comma-separated (bf16,fp8; default: the weights' unquantized dtype)."),
    max_num_seqs: Optional[str] = typer.Option(None, "--max-num-seqs",
                                               help="Engine sequence limits to try (default 64,128,256)."),
    max_batched_tokens: Optional[int] = typer.Option(None, "--max-batched-tokens",
                                                     help="Token budget of a step (default 8192)."),
    disaggregation: Optional[bool] = typer.Option(None, "--disagg/--no-disagg",
                                                  help="Also try separate prefill and decode pools."),
    expert_parallel: Optional[bool] = typer.Option(None, "--expert-parallel/--no-expert-parallel",
                                                   help="Also try vLLM's expert parallelism over the TP GPUs and "
                                                   "over data-parallel ranks (a model with experts; default on)."),
    kv_link_gb_s: Optional[float] = typer.Option(None, "--kv-link-gb-s",
                                                 help="KV transfer bandwidth between pools, GB/s per GPU."),
    gpu_memory_utilization: Optional[float] = typer.Option(
        None, "--gpu-memory-utilization", help="Share of each GPU's memory the engine may fill "
        "(vLLM's flag of that name; default 0.9)."),
    kv_cache_memory: Optional[float] = typer.Option(
        None, "--kv-cache-memory", help="KV cache per GPU, GiB (vLLM's --kv-cache-memory, there in "
        "bytes; e.g. the 'Available KV cache memory' its log names), in place of what the memory "
        "left after the weights and activations holds."),
    engine: Optional[str] = typer.Option(None, "--engine", help="Engine profile (default vllm)."),
    host_probe_ms: Optional[float] = typer.Option(None, "--host-probe-ms", help="The serving host's "
                                                  "probe time, ms (perfmodel host-probe); default: the "
                                                  "profile's host."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a hyperparameter: KEY=VALUE."),
    prices: Optional[Path] = typer.Option(None, "--prices", help="Price file (default specs/prices.yaml)."),
    requests: Optional[int] = typer.Option(None, "--requests", help="Measured requests per simulation, at most."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the simulated traffic."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write report.html and summary.md here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Capacity planning: the cheapest GPU type × count × layout × dtype meeting the SLOs.

    Searches TP/EP/PP layouts (and for a model with experts vLLM's expert parallelism over TP GPUs
    and data-parallel ranks), replicas, dtypes and max_num_seqs (and prefill/decode
    disaggregation), pruned by a closed-form steady state and checked by a
    seeded discrete-event simulation of continuous batching on the calibrated step times.
    """
    from perfmodel.cli import make_console, print_json
    from perfmodel.planning.answer import answer
    from perfmodel.planning.question import build_question
    from perfmodel.planning.search import run_search
    from perfmodel.planning.terminal import print_answer, progress_bar
    from perfmodel.templating import check_out_dir

    question = build_question(config, _overrides(
        model=model, set_=set_, engine=engine, prices=prices, rate=rate, burstiness=burstiness,
        input_len=input_len,
        output_len=output_len, lengths_file=lengths_file, ttft_p50=ttft_p50, ttft_p90=ttft_p90,
        ttft_p99=ttft_p99, itl_p50=itl_p50, itl_p90=itl_p90, itl_p99=itl_p99, e2e_p90=e2e_p90,
        gpu=gpu, max_gpus=max_gpus, dtype=dtype, max_num_seqs=max_num_seqs,
        max_batched_tokens=max_batched_tokens, disaggregation=disaggregation, expert_parallel=expert_parallel,
        kv_link_gb_s=kv_link_gb_s, kv_dtype=kv_dtype, requests=requests, seed=seed, host_probe_ms=host_probe_ms,
        gpu_memory_utilization=gpu_memory_utilization, kv_cache_memory_gib=kv_cache_memory))
    if out is not None:
        check_out_dir(out)
    if question.host_probe_ms is not None:  # a profile without a host-speed fit: bad input, not infeasible
        from perfmodel.host_speed import host_factor
        from perfmodel.profile import load_profile
        from perfmodel.specs.hardware import load_gpu

        for name in question.search.gpus:
            host_factor(load_profile(question.engine, load_gpu(name).name), question.host_probe_ms)
    with progress_bar() as progress:
        result = run_search(question, progress)
        data = answer(result)
    if out is not None:
        from perfmodel.planning.report import write_report

        data["report"] = [str(p) for p in write_report(result, data, out)]
    if as_json:
        print_json(data)
    else:
        print_answer(data, make_console())
    if data["chosen"] is None:
        print(f"perfmodel: {data['infeasible']}", file=sys.stderr)
        sys.exit(1)
