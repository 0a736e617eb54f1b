"""The plan's answer as data: the chosen deployment, its cost, latencies, goodput, margins, the
profile it stands on, the frontiers, the latency-vs-rate sweep and the caveats (JSON-ready)."""

from __future__ import annotations

import math
from typing import Any, Optional

from perfmodel.host_noise import factor_range
from perfmodel.planning.candidates import Evaluation, weights_text
from perfmodel.planning.search import Plan, Search, choose
from perfmodel.planning.steptime import default_graph_tokens, weight_choice
from perfmodel.prediction import Workload, evaluate
from perfmodel.wording import plural

#: Multiples of the question's rate the chosen deployment is simulated at (latency vs rate).
SWEEP_MULTIPLES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def rate_sweep(search: Search, chosen: Evaluation) -> list[dict[str, Any]]:
    """Latency percentiles (s) of the chosen deployment at multiples of the rate (req/s),
    simulated."""
    from perfmodel.planning.disagg import simulate_pair

    rows = []
    for x in SWEEP_MULTIPLES:
        rate = search.rate * x
        if chosen.kind == "disaggregated":
            p, d = chosen.pools
            ev = simulate_pair(search, chosen.setups[0], p.engine, p.replicas, chosen.setups[1], d.engine,
                               d.replicas, rate=rate)
        else:
            pool = chosen.pools[0]
            ev = search.simulated(chosen.setups[0], pool.engine, pool.replicas, rate=rate)
        rows.append({"rate": rate, "multiple": x, "stable": ev.stable, "meets": ev.meets,
                     "goodput_fraction": ev.details.get("goodput_fraction"),
                     **{f"{m}_{q}": ev.metrics[m][q] for m in ("ttft", "itl", "e2e") for q in ("p50", "p90", "p99")}})
    return rows


def pareto(points: list[dict[str, Any]], x: str, y: str, x_max: bool, y_max: bool) -> list[dict[str, Any]]:
    """The points no other point beats on both ``x`` and ``y`` (max or min each)."""
    sx, sy = (1 if x_max else -1), (1 if y_max else -1)
    ordered = sorted(points, key=lambda p: (-sx * p[x], -sy * p[y]))
    front, best = [], -math.inf
    for p in ordered:
        if sy * p[y] > best:
            front.append(p)
            best = sy * p[y]
    return front


def weights_label(ev: Evaluation) -> str:
    """A candidate's weights (and KV cache where it is not theirs), as its label gives them:
    ``fp8``, ``bf16 kv-fp8``; a disaggregated pair's two joined by +."""
    return "+".join(sorted({p.engine.weights_label() for p in ev.pools}))


def point(ev: Evaluation, rate: float, mean_in: float, mean_out: float) -> dict[str, Any]:
    """One candidate as a frontier point."""
    out_tok = rate * mean_out
    tpot = ev.metrics["tpot"]["mean"]
    return {"label": ev.label(), "kind": ev.kind, "gpu": _gpu_label(ev),
            "dtype": weights_label(ev), "gpus": ev.gpus, "usd_per_hour": ev.usd_per_hour, "source": ev.source, "meets": ev.meets,
            "outcome": ev.outcome,
            "output_tok_s_per_gpu": out_tok / ev.gpus,
            "tok_s_per_user": 1.0 / tpot if tpot and tpot > 0 and math.isfinite(tpot) else 0.0,
            "usd_per_million_output_tokens": ev.usd_per_hour / (out_tok * 3600.0 / 1e6),
            "ttft_p90_s": ev.metrics["ttft"]["p90"], "itl_p90_s": ev.metrics["itl"]["p90"]}


#: The choices :func:`cheapest_by` answers for, each where the search had more than one option.
CHOICES = ("dtype", "gpu")


def cheapest_by(plan: Plan, points: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any] | None]]:
    """For each choice the search varied (:data:`CHOICES`: the weights' dtype or scheme with the
    KV cache's, the GPU type), each option's answer: its candidates' cheapest simulated deployment
    meeting every SLO, as :func:`~perfmodel.planning.search.choose` picks the whole answer (ties:
    fewer GPUs, more headroom); where none was simulated meeting them, its cheapest from the
    closed form (``source``: closed form); None where no candidate of it meets them: what fp8, or
    another GPU, buys at this traffic."""
    # every (GPU, dtype, layout, KV dtype) the search set up, evaluated or rejected early, and pairs
    options = {"dtype": {weights_text(dtype, kv) for _, dtype, _, kv in plan.setups}
               | {weights_label(ev) for ev in plan.evaluations},
               "gpu": {gpu for gpu, *_ in plan.setups} | {_gpu_label(ev) for ev in plan.evaluations}}
    of = {"dtype": weights_label, "gpu": _gpu_label}
    rate = plan.question.traffic.rate
    out: dict[str, dict[str, dict[str, Any] | None]] = {}
    for choice in CHOICES:
        if len(options[choice]) < 2:
            continue
        out[choice] = {}
        for option in sorted(options[choice]):
            mine = [ev for ev in plan.evaluations if of[choice](ev) == option]
            simulated = choose(mine)
            if simulated is not None:
                out[choice][option] = point(simulated, rate, plan.mean_in, plan.mean_out)
                continue
            meeting = [p for p in points if p[choice] == option and p["meets"]]
            out[choice][option] = min(meeting, default=None, key=lambda p: (
                p["usd_per_hour"], p["usd_per_million_output_tokens"]))
    return out


def _gpu_label(ev: Evaluation) -> str:
    """A candidate's GPU type, as its point gives it (a pair of two types joined by +)."""
    return "+".join(sorted({p.engine.gpu for p in ev.pools}))


def frontier_points(plan: Plan) -> list[dict[str, Any]]:
    """Every stable candidate once (simulated numbers where it was simulated)."""
    best: dict[str, Evaluation] = {}
    for ev in plan.evaluations:
        if not ev.stable:
            continue
        key = ev.label()
        if key not in best or (best[key].source != "simulation" and ev.source == "simulation"):
            best[key] = ev
    return [point(ev, plan.question.traffic.rate, plan.mean_in, plan.mean_out) for ev in best.values()]


def frontiers(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {"throughput_vs_interactivity": pareto(points, "tok_s_per_user", "output_tok_s_per_gpu", True, True),
            "cost_vs_ttft": pareto(points, "ttft_p90_s", "usd_per_million_output_tokens", False, False)}


def _band_check(band, check, runs: str) -> tuple[str, dict[str, float], str]:
    """What a plan takes from a group's serving runs checked against ``band``
    (:class:`perfmodel.profile.ServingSchemeCheck`; ``runs`` names them, e.g. "fp8 runs"): the
    clause saying so, the metrics to widen to their own 90th percentile (outside the band, with
    runs enough), and why there is no band (outside it, with too few), one of the two empty."""
    if check.within:
        return f"; its {check.runs} {runs} lie within it", {}, ""
    if check.own_band:
        return (f"; its {check.runs} {runs} lie outside it, and each metric takes the wider of it and their "
                f"own 90th percentile"), dict(check.errors), ""
    worst = max((m for m in check.errors if getattr(band, m, None) is not None),
                key=lambda m: check.errors[m] / getattr(band, m), default=None)
    return "", {}, (f"its {check.runs} {runs} lie outside it"
                    + (f" ({worst} {check.errors[worst]:.0%} against ±{getattr(band, worst):.0%})" if worst else ""))


def serving_band(plan: Plan, ev: Evaluation, setup, pool) -> tuple[dict[str, Any] | None, str]:
    """The profile's serving error band (:class:`perfmodel.profile.ServingBand`) where the
    deployment lies where it was measured (one engine on one GPU of the profile's own type, in the
    dtype of its fit, prefill and decode colocated), and a line saying so or why not. The band is
    the MoE models' runs': a dense model's plan carries it as far as the dense models'
    served runs, checked against it apart (``dense``), lie within it (each metric at the wider of
    it and their own 90th percentile where they lie outside it with runs enough), and none
    where no dense model was served, as its offline predictions take the MoE models' band only
    where held-out dense models were checked against it (:func:`perfmodel.prediction.error_band`)."""
    from perfmodel.prediction import band_scope

    band = setup.profile.serving_error_band
    if band is None:
        return None, "no serving band: the profile states none"
    scope = band_scope(setup.profile) or {}
    own = scope.get("dtype")
    outside = []
    checked = ""
    widen: dict[str, float] = {}  # runs outside the band with runs enough for their own: per metric, the wider
    if not plan.model.is_moe:
        if band.dense is None:
            outside.append("measured on MoE models' runs (no dense model was served)")
        else:
            checked, widen, out = _band_check(band, band.dense, "runs of dense models")
            if out:
                outside.append(f"measured on MoE models' runs; {out}")
    if setup.offer.gpu.name != setup.profile.gpu:
        outside.append(f"measured on {setup.profile.gpu}, not {setup.offer.gpu.name}")
    if pool.engine.layout.gpus != 1:
        outside.append("measured on one GPU per engine")
    kv = setup.kv_dtype if setup.kv_dtype not in (None, own) else None
    scheme = weights_text(setup.dtype, kv)  # a checkpoint stored quantized is searched as its scheme
    check = band.schemes.get(scheme) if own is not None and scheme != own else None
    if check is not None:  # a scheme whose serving runs were checked against the band
        text, wider, out = _band_check(band, check, f"{scheme} runs")
        checked += text
        for metric, error in wider.items():
            widen[metric] = max(error, widen.get(metric, 0.0))
        if out:
            outside.append(f"measured in {own}; {out}")
    else:
        if own not in (None, setup.dtype):
            outside.append(f"measured in {own}")
        if kv is not None:
            outside.append(f"measured with a {own} KV cache, not {kv}")
    if ev.kind != "colocated":
        outside.append("measured with prefill and decode colocated")
    if outside:
        return None, f"no serving band: {'; '.join(outside)}"
    values = band.model_dump(exclude={"runs", "source", "schemes", "dense"}, exclude_none=True)
    values.update({metric: max(values[metric], error) for metric, error in widen.items() if metric in values})
    host = ("" if plan.question.host_probe_ms is not None else
            "; they were replayed at their hosts' measured speeds, and this plan is at the profile's "
            "reference host (--host-probe-ms gives yours)")
    where = ""
    if band.carried_from is not None and band.own_runs is not None:
        left = [m for m in band.own_runs.errors if getattr(band, m, None) is None]
        where = (f" on {band.carried_from}, carried to {setup.profile.gpu}, where {band.own_runs.runs} measured "
                 f"runs lie within it" + (f" but in {', '.join(left)} (no band there)" if left else ""))
    return ({**values, "runs": band.runs, "source": band.source},
            f"serving band: the 90th percentile of |error| over {band.runs} held-out measured serving runs "
            f"that kept up{where}{checked}{host}")


def provenance(plan: Plan, ev: Evaluation) -> list[dict[str, Any]]:
    """The engine profile each pool's step times stand on, with its error band (from a
    request prediction at the pool's mean batch) and the host it was scaled to (``host``:
    :func:`perfmodel.prediction.host_record`)."""
    out = []
    for pool, setup in zip(ev.pools, ev.setups):
        t = pool.engine.layout
        batch = max(1, round(ev.details.get("mean_batch") or 1)) * t.dp  # a stream's: one rank's
        w = Workload(batch=batch, input_len=max(1, round(plan.mean_in)), output_len=max(2, round(plan.mean_out)),
                     tp=t.tp, ep=t.ep, pp=t.pp, dp=t.dp, expert_parallel=t.expert_parallel,
                     **weight_choice(pool.engine.dtype),
                     host_probe_ms=plan.question.host_probe_ms, kv_dtype=setup.kv_dtype)
        pred = evaluate(plan.model, setup.offer.gpu, setup.profile, w)
        prov = pred.provenance
        band, band_note = serving_band(plan, ev, setup, pool)
        out.append({"pool": "prefill" if ev.kind == "disaggregated" and not out else
                    ("decode" if ev.kind == "disaggregated" else "all"),
                    "gpu": setup.offer.name, "profile": prov["profile"], "engine": prov["engine"],
                    "fitted_on": setup.profile.gpu, "calibrated": prov["calibrated"],
                    "transfer": prov["transfer"], "note": prov["note"],
                    "error_band": prov["error_band"], "error_band_note": prov["error_band_note"],
                    "serving_error_band": band, "serving_error_band_note": band_note,
                    "host": prov["host"],
                    "intervals_at_mean_batch": pred.intervals(),
                    "prefill_step_floor_s": setup.steps.floor_s if setup.steps else None,
                    "launch_serial_s": setup.steps.serial_s if setup.steps else None,
                    "launch_serial_seq_s": setup.steps.serial_seq_s if setup.steps else None,
                    "launch_factor_p10_p90": (factor_range(setup.steps.launch_noise)
                                              if setup.steps and setup.steps.launch_noise else None),
                    "graph_tokens": int(default_graph_tokens(setup.steps, setup.profile, pool.engine.max_num_seqs,
                                                             pool.engine.max_batched_tokens))
                    if setup.steps else None,
                    "memory_per_gpu": memory_per_gpu(setup.steps) if setup.steps else None})
    return out


def memory_per_gpu(steps) -> dict[str, Any]:
    """One GPU's memory as the plan holds it (GiB): what the engine may fill, its weights, the
    activations it reserves, its KV cache (``kv_cache_given``: the size it was given, vLLM's
    --kv-cache-memory, rather than what the rest leaves), and the tokens one engine's cache holds
    (a tensor-parallel group's GPUs together; each data-parallel rank has its own), what vLLM's
    log names 'GPU KV cache size'."""
    gib = 2.0**30
    return {"usable_gib": steps.usable_bytes / gib, "weights_gib": steps.weights_bytes / gib,
            "activations_gib": steps.activation_bytes / gib, "kv_cache_gib": steps.kv_capacity_bytes / gib,
            "kv_cache_given": steps.kv_cache_bytes is not None, "kv_cache_tokens": steps.kv_tokens}


#: A KV cache per GPU (GiB) below which vLLM's estimate of its CUDA graphs' memory, which the plan
#: does not count, may take a large share of it: up to 4.0 GiB in the committed engine logs
#: (gpt-oss-120b on one H100; docs/h100.md).
SMALL_KV_CACHE_GIB = 8.0
#: What the measured serving runs say of arrivals other than Poisson.
BURSTY_VALIDATION = ("Bursty arrivals were measured with gamma gaps of shape 0.25, beside Poisson, on two "
                     "machines (docs/serving.md, 'Bursty arrivals'): OLMoE-1B-7B on one H200 at 8, 24 and 40 "
                     "req/s, replayed with TTFT p50 and p90 within 20% and ITL within 15%; OLMoE-1B-7B at 8, 24 "
                     "and 40 req/s and Mixtral-8x7B in fp8 at 9 and 13 on one H100, replayed with TTFT p50 "
                     "MAPE 9.5% and ITL p90 MAPE 9.0%. Steadier gaps (shape 4) were measured once, OLMoE-1B-7B "
                     "at 8, 24 and 40 req/s on one H100 with no Poisson run beside them: replayed within 8% "
                     "at 8 req/s, 28-34% long in TTFT p50 and ITL p50 at 24; what they change against "
                     "Poisson is not measured.")

#: Below this share of requests within their own SLOs (goodput), or this close to the KV cache's
#: capacity or the closed form's saturation rate, the answer says the deployment runs near its limit.
GOODPUT_WARN, KV_FULL_WARN, UTILIZATION_WARN = 0.5, 0.95, 0.85


def near_limit(plan: Plan, ev: Optional[Evaluation]) -> list[str]:
    """A caveat where the chosen deployment meets the percentile targets near its limit: most
    requests missing their own SLOs (goodput), its KV cache full (preempting), or its rate close
    to the closed form's saturation; empty otherwise."""
    if ev is None:
        return []
    d, why = ev.details, []
    good = d.get("goodput_fraction")
    if good is not None and good < GOODPUT_WARN:
        why.append(f"only {good:.0%} of requests meet their own TTFT/TPOT/E2E targets (goodput), though the "
                   "percentile targets hold")
    if (d.get("peak_kv_fraction") or 0) >= KV_FULL_WARN:
        why.append(f"its KV cache fills ({d['peak_kv_fraction']:.0%} at the peak, {d.get('preemptions') or 0} "
                   "preemptions)")
    sat = d.get("saturation_rate_per_replica")
    if ev.kind == "colocated" and sat:
        share = d.get("rate", plan.question.traffic.rate) / ev.pools[0].replicas / sat
        if share >= UTILIZATION_WARN:
            why.append(f"each replica takes {share:.0%} of the rate the closed form saturates it at")
    return [f"The chosen deployment runs near its limit: {'; '.join(why)}; a little more traffic, or a "
            "slower host, breaks its targets (see rate_sweep)."] if why else []


def caveats(plan: Plan, ev: Optional[Evaluation], prov: list[dict[str, Any]]) -> list[str]:
    out = ["Serving latencies come from a simulation of vLLM-style continuous batching (chunked "
           "prefill, max_num_seqs, KV-cache preemption; asynchronous scheduling where the engine "
           "profile says so) on the model's step "
           "times, checked against measured vLLM serving runs on one H200 and on one H100 (perfmodel "
           "validate all --serving --gpu ...): not on other GPUs, several GPUs or disaggregated pools. "
           "Past saturation the "
           "check is weaker: the capacity of a small model with max_num_seqs sequences running and a "
           "long queue came out above the measured one (the validation report states by how much)."]
    out += near_limit(plan, ev)
    if plan.model.quantization:
        from perfmodel.quantization import load_schemes

        layers = ", ".join(load_schemes()[plan.model.quantization].layers)
        out.append(f"{plan.model.name}'s checkpoint is stored in {plan.model.quantization} (its config.json's "
                   f"quantization_config: {layers} quantized): --dtype bf16 runs it so, the other layers in "
                   f"bf16, and its candidates are labelled {plan.model.quantization}; one at an alias dtype "
                   "(fp8) runs the alias's scheme on every linear layer instead, and --dtype none all in bf16.")
    if plan.model.unread_quantization:
        out.append(f"{plan.model.name}'s config.json carries a quantization_config no scheme describes "
                   f"(quant_method '{plan.model.unread_quantization}'): a candidate labelled bf16 runs it "
                   "unquantized; --dtype takes a scheme instead (fp8, fp8-block, w4a16, ...).")
    if any(s.layout.gpus > 1 for s in plan.setups.values()):
        out.append("Multi-GPU layouts (TP/EP/PP/DP > 1) use the model's collective terms (ring "
                   "all-reduce, all-to-all, the DP ranks' all-gather and reduce-scatter, pipeline sends) and, "
                   "with expert parallelism, the wait for the GPU whose experts a step touched most: not yet "
                   "validated on real multi-GPU runs.")
    for p in prov:
        out.append(f"{p['gpu']}: {p['note']}; {p['error_band_note']}.")
        host = p.get("host") or {}
        if host.get("probe_ms") is not None:
            out.append(f"{p['gpu']}: the host's times scaled x {host['factor']:.2f} to a host probe of "
                       f"{host['probe_ms']:.1f} ms (the profile's host: {host['reference_probe_ms']:.1f} ms).")
        if p.get("prefill_step_floor_s") and p["pool"] == "all":
            graph = p.get("graph_tokens") or 0
            beyond = f" and more than {graph:,} tokens (the largest captured CUDA graph)" if graph else ""
            serial = ""
            if p.get("launch_serial_s"):
                serial = (f"; where its kernels take longer, they and {p['launch_serial_s'] * 1e3:.1f} ms of the "
                          "host's work they do not overlap (its scheduling and first launches, its outputs)")
                if p.get("launch_serial_seq_s"):
                    serial += f", and {p['launch_serial_seq_s'] * 1e6:.0f} us more for each further sequence it holds"
            out.append(f"{p['gpu']}: a step holding prompt tokens{beyond} takes at least "
                       f"{p['prefill_step_floor_s'] * 1e3:.1f} ms (the profile's prefill host floor, fitted "
                       f"on offline prefills), which sets the ITL of tokens that share a step with a prefill{serial}.")
        m = p.get("memory_per_gpu")
        if m and not m["kv_cache_given"] and m["kv_cache_gib"] < SMALL_KV_CACHE_GIB:
            out.append(f"{p['gpu']}: the weights and activations leave a KV cache of {m['kv_cache_gib']:.1f} GiB "
                       "per GPU, from which vLLM also takes its estimate of its CUDA graphs' memory, not "
                       "counted here: 0.01–0.64 GiB in the committed engine logs of most models, 2.1 GiB for "
                       "DeepSeek-V3 cut to 6 layers, 4.0 GiB for gpt-oss-120b at vLLM's routing simulator. "
                       "The engine log's 'Available KV cache memory', given as --kv-cache-memory, plans on "
                       "the engine's own.")
    noisy = {p["gpu"]: p["launch_factor_p10_p90"] for p in prov if p.get("launch_factor_p10_p90")}
    for gpu, (lo, hi) in noisy.items():
        out.append(f"{gpu}: a step the host launches (prompt tokens beyond the largest CUDA graph) takes a host "
                   f"time that varies as the profile's launch noise says (x {lo:.2f}–{hi:.2f} of the model's "
                   "between its 10th and 90th percentiles, drifting over seconds; measured in vLLM's step "
                   "traces on one H200); the simulation draws it, one seeded draw per candidate.")
    out.append("Replicas split the traffic evenly at random; a PP replica is modelled as pp "
               "interleaved micro-batch streams, and each DP rank of a replica as a stream of its own (its "
               "sequences, max_num_seqs and KV cache; its MoE layers stepping with the other ranks', taken "
               "as equally busy). Prices are examples (specs/prices.yaml): edit them.")
    k = plan.question.traffic.burstiness
    if k != 1.0:
        out.append(f"Arrivals are {'burstier' if k < 1 else 'steadier'} than Poisson: gamma-distributed gaps of "
                   f"shape {k:g} (vllm bench serve --burstiness; squared coefficient of variation {1 / k:.3g}), "
                   "which each replica takes a share of at random, so that it sees them less "
                   f"{'bursty' if k < 1 else 'steady'}. The simulation draws them; the closed form that sizes "
                   "the candidates before it takes them for Poisson arrivals, but for a prefill pool's queue "
                   "(Kingman's G/D/1). " + BURSTY_VALIDATION)
    if ev is not None and ev.kind == "disaggregated":
        link = (f"the network at {plan.question.search.kv_link_gb_s:g} GB/s per GPU (--kv-link-gb-s)"
                if plan.question.search.kv_link_gb_s else "the GPU's scale-up link (both pools in one NVLink "
                "domain; pools on other nodes or of two GPU types need --kv-link-gb-s)")
        out.append(f"Disaggregated pools move each prompt's KV cache over {link}: "
                   f"{ev.details['kv_transfer_s'] * 1e3:.2f} ms a request at the mean prompt, the link "
                   f"{100 * ev.details['kv_link_utilization']:.0f}% busy, {ev.details['kv_wait_s'] * 1e3:.2f} ms "
                   "of mean wait (M/D/1), all in TTFT.")
    return list(dict.fromkeys(out))  # two pools on one GPU type say the same


def margins(plan: Plan, ev: Evaluation) -> dict[str, Any]:
    targets = plan.question.slo.targets()
    slo = {}
    for name, target in targets.items():
        metric, pct = name.split("_")
        value = ev.metrics[metric][pct]
        slo[name] = {"target_s": target, "predicted_s": value, "headroom": 1.0 - value / target}
    out: dict[str, Any] = {"slo": slo, "peak_kv_fraction": ev.details.get("peak_kv_fraction"),
                           "preemptions": ev.details.get("preemptions")}
    sat = ev.details.get("saturation_rate_per_replica")
    if ev.kind == "colocated" and sat:
        pool = ev.pools[0]
        per_replica = ev.details.get("rate", plan.question.traffic.rate) / pool.replicas
        out["utilization"] = per_replica / sat
        out["saturation_rate_per_replica"] = sat
        out["mean_batch_per_stream"] = ev.details.get("mean_batch")
        out["max_num_seqs_per_stream"] = max(1, pool.engine.max_num_seqs // pool.engine.layout.pp)
    return out


def closest(plan: Plan) -> Optional[Evaluation]:
    """The evaluation nearest to meeting every SLO (smallest worst ratio), simulated first."""
    stable = [e for e in plan.evaluations if e.stable and e.ratios]
    if not stable:
        return None
    return min(stable, key=lambda e: (e.source != "simulation", max(e.ratios.values()), e.usd_per_hour))


def most_served(plan: Plan) -> Optional[dict[str, Any]]:
    """Of the configurations rejected as overloaded, the one that serves the highest rate (its
    entry of ``plan.rejected``), None without any."""
    rated = [r for r in plan.rejected if r.get("max_rate_req_s")]
    return max(rated, key=lambda r: r["max_rate_req_s"]) if rated else None


def infeasible_message(plan: Plan) -> str:
    q = plan.question
    gpus = q.search.max_gpus
    where = f"within {gpus} {plural(gpus, 'GPU')} of {', '.join(q.search.gpus)} ({', '.join(q.search.dtypes)})"
    near = closest(plan)
    if near is None:
        reasons = sorted({r["reason"].split(":")[0] for r in plan.rejected})
        text = f"no configuration can serve {q.traffic.rate:g} req/s {where}: {'; '.join(reasons) or 'none fits'}"
        top = most_served(plan)
        if top is not None:
            text += f"; closest: {top['label']}, which takes at most {top['max_rate_req_s']:.3g} req/s"
        return text
    return (f"no configuration meets the SLOs {where}; closest: {near.label()} "
            f"(${near.usd_per_hour:.2f}/h, {near.source}): {'; '.join(near.failures)}")


def answer(plan: Plan, sweep: bool = True) -> dict[str, Any]:
    """The whole answer (see the module docstring)."""
    q = plan.question
    rate = q.traffic.rate
    ev = plan.chosen
    points = frontier_points(plan)
    data: dict[str, Any] = {
        "model": plan.model.name,
        "question": q.model_dump(mode="json"),
        "traffic": {"rate_req_s": rate, "burstiness": q.traffic.burstiness, "mean_input_len": plan.mean_in,
                    "mean_output_len": plan.mean_out},
        "chosen": None, "cost": None, "latency": None, "throughput": None, "goodput": None,
        "margins": None, "profile": None,
        "frontier": frontiers(points),
        "cheapest_by": cheapest_by(plan, points),
        "candidates": {"evaluated": len(plan.evaluations), "simulated": plan.simulations,
                       "rejected": plan.rejected},
        "timings_s": plan.timings,
    }
    prov = provenance(plan, ev) if ev is not None else []
    data["caveats"] = caveats(plan, ev, prov)
    if ev is None:
        data["infeasible"] = infeasible_message(plan)
        near = closest(plan)
        data["closest"] = None if near is None else {"label": near.label(), "source": near.source,
                                                      "failures": near.failures, "ratios": near.ratios}
        top = most_served(plan) if near is None else None
        if top is not None:
            data["closest"] = {"label": top["label"], "source": "closed form",
                               "failures": [top["reason"]], "max_rate_req_s": top["max_rate_req_s"]}
        data["points"] = points
        return data
    out_tok = rate * plan.mean_out
    pools = [{"role": role, **p.engine.to_dict(), "replicas": p.replicas, "gpus": p.gpus,
              "usd_per_gpu_hour": p.usd_per_gpu_hour, "usd_per_hour": p.usd_per_hour}
             for role, p in zip(("prefill", "decode") if ev.kind == "disaggregated" else ("all",), ev.pools)]
    first = ev.pools[-1]
    data["chosen"] = {"label": ev.label(), "kind": ev.kind, "gpu": first.engine.gpu, "gpus": ev.gpus,
                      "replicas": first.replicas, "layout": pools[-1]["layout"], "dtype": first.engine.dtype,
                      "max_num_seqs": first.engine.max_num_seqs,
                      "max_batched_tokens": first.engine.max_batched_tokens, "pools": pools,
                      "source": ev.source}
    data["cost"] = {"usd_per_hour": ev.usd_per_hour,
                    "usd_per_million_output_tokens": ev.usd_per_hour / (out_tok * 3600 / 1e6),
                    "usd_per_million_tokens": ev.usd_per_hour / (rate * (plan.mean_in + plan.mean_out) * 3600 / 1e6),
                    "price_sources": {s.offer.name: s.offer.price_source for s in ev.setups}}
    data["latency"] = {f"{m}_s": ev.metrics[m] for m in ("ttft", "itl", "tpot", "e2e")}
    tpot = ev.metrics["tpot"]["mean"]
    data["throughput"] = {"requests_per_s": rate, "output_tokens_per_s": out_tok,
                          "output_tokens_per_s_per_gpu": out_tok / ev.gpus,
                          "tokens_per_s_per_user": 1.0 / tpot if tpot > 0 else None}
    good = ev.details.get("goodput_fraction")
    data["goodput"] = {"fraction": good, "requests_per_s": rate * good if good is not None else None,
                       "output_tokens_per_s": out_tok * good if good is not None else None,
                       "definition": "requests within TTFT <= the largest TTFT target, TPOT <= the "
                                     "largest ITL target, E2E <= the E2E target (as vllm bench serve --goodput)"}
    if ev.kind == "disaggregated":
        data["kv_transfer"] = {"transfer_s": ev.details["kv_transfer_s"], "mean_wait_s": ev.details["kv_wait_s"],
                               "link_utilization": ev.details["kv_link_utilization"],
                               "link_gb_s": q.search.kv_link_gb_s}
    data["margins"] = margins(plan, ev)
    data["profile"] = prov
    data["simulation"] = {"measured_requests": ev.details.get("measured_requests"),
                          "seed": q.simulation.seed, "mean_batch_per_stream": ev.details.get("mean_batch")}
    data["rate_sweep"] = rate_sweep(plan.search, ev) if sweep else []
    data["points"] = points
    return data
