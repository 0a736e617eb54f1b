"""Prefill/decode disaggregation: a pool of prefill replicas and a pool of decode replicas.

Prefill replicas run prompts only (their steps hold no decodes, so a long prompt never stalls
anyone's tokens); each request's KV cache then crosses to a decode replica, per GPU over its
link (``search.kv_link_gb_s``, default the GPU's scale-up link: the pools share one NVLink
domain), and the decode replicas run decode-only steps. TTFT = prefill pool's TTFT + the KV
transfer; ITL and TPOT are the decode pool's; E2E = TTFT + the decode pool's time. Each pool is
sized by the closed form, cheapest first, then both are simulated and grown until the SLOs hold.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from perfmodel.planning.candidates import Engine, Evaluation, Pool, judge, request_goodput
from perfmodel.planning.serving import serving_curve
from perfmodel.planning.simulate import EngineLimits, percentile, weighted_percentile

#: Simulation rounds that may grow a pool before giving up.
_GROW_ROUNDS = 4


def _only(targets: dict[str, float], metrics: tuple[str, ...]) -> dict[str, float]:
    return {k: v for k, v in targets.items() if k.split("_")[0] in metrics}


def transfer_s(search, setup) -> float:
    """Seconds to move one mean prompt's KV cache from a prefill GPU to a decode GPU: the
    roofline's link transfer (:func:`perfmodel.roofline.transfer_time`, the profile's link
    efficiency) of the KV bytes one GPU holds for the prompt, each GPU sending its own share."""
    import sympy as sp

    from perfmodel import symbols as s
    from perfmodel.op_classes import OpClass
    from perfmodel.prediction import hardware_values
    from perfmodel.roofline import transfer_time

    nbytes = sp.Symbol("kv_bytes", positive=True)
    values = hardware_values(setup.offer.gpu, setup.profile, "bf16")  # the link's numbers only
    if search.q.search.kv_link_gb_s:
        values[s.link_bw] = search.q.search.kv_link_gb_s * 1e9
    values[nbytes] = search.mean_in * setup.steps.kv_bytes_per_token
    return float(transfer_time(nbytes, s.link_bw, OpClass.COMM).subs(values))


def _cheapest_prefill(search, dtype: str, kv_dtype: Optional[str]):
    targets = _only(search.targets, ("ttft",))
    best = None
    for setup in search.setups.values():
        if setup.dtype != dtype or setup.kv_dtype != kv_dtype or setup.curve is None:
            continue
        pp = setup.layout.pp
        limits = EngineLimits(max(search.seqs), search.budget, setup.steps.kv_tokens // pp,
                              setup.profile.options.async_scheduling)
        curve = serving_curve(setup.steps, limits, search.mean_in, search.mean_out, kind="prefill")
        move = transfer_s(search, setup)
        engine = Engine(setup.offer.name, dtype, setup.layout, max(search.seqs), search.budget, kv_dtype)
        for r in range(1, search.q.search.max_gpus // engine.gpus + 1):
            state = curve.at(search.rate / (r * pp))
            if not state.stable:
                continue
            ttft = {k: v + move for k, v in state.ttft.items()}
            if not judge({"ttft": ttft}, targets, 1.0)[0]:
                cost = r * engine.gpus * setup.offer.usd_per_gpu_hour
                if best is None or cost < best[0]:
                    best = (cost, setup, engine, r, ttft, move)
                break
    return best


def _cheapest_decode(search, dtype: str, kv_dtype: Optional[str], ttft_p90: float):
    targets = _only(search.targets, ("itl",))
    e2e_target = search.targets.get("e2e_p90")
    best = None
    for setup in search.setups.values():
        if setup.dtype != dtype or setup.kv_dtype != kv_dtype or setup.curve is None:
            continue
        pp = setup.layout.pp
        limits = EngineLimits(max(1, max(search.seqs) // pp), search.budget, setup.steps.kv_tokens // pp,
                              setup.profile.options.async_scheduling)
        full = serving_curve(setup.steps, limits, search.mean_in, search.mean_out, kind="decode")
        for seqs in search.seqs:
            curve = full.capped(max(1, seqs // pp))
            engine = Engine(setup.offer.name, dtype, setup.layout, seqs, search.budget, kv_dtype)
            for r in range(1, search.q.search.max_gpus // engine.gpus + 1):
                state = curve.at(search.rate / (r * pp))
                if not state.stable or judge({"itl": state.itl}, targets, 1.0)[0]:
                    continue
                if e2e_target and ttft_p90 + state.e2e["p90"] > e2e_target:
                    continue
                cost = r * engine.gpus * setup.offer.usd_per_gpu_hour
                if best is None or cost < best[0]:
                    best = (cost, setup, engine, r, state)
                break
    return best


def simulate_pair(search, p_setup, p_engine, r_p, move, d_setup, d_engine, r_d,
                  rate: Optional[float] = None) -> Evaluation:
    """Both pools simulated on the same seeded requests; their latencies joined per request."""
    rate = search.rate if rate is None else rate
    pp_p, pp_d = p_engine.layout.pp, d_engine.layout.pp
    p_rate, d_rate = rate / (r_p * pp_p), rate / (r_d * pp_d)
    p_limits = EngineLimits(max(search.seqs), search.budget, p_setup.steps.kv_tokens // pp_p,
                            p_setup.profile.options.async_scheduling)
    d_limits = EngineLimits(max(1, d_engine.max_num_seqs // pp_d), search.budget,
                            d_setup.steps.kv_tokens // pp_d, d_setup.profile.options.async_scheduling)
    p_state = serving_curve(p_setup.steps, p_limits, search.mean_in, search.mean_out, "prefill").at(p_rate)
    d_state = serving_curve(d_setup.steps, d_limits, search.mean_in, search.mean_out,
                            "decode").capped(d_limits.max_num_seqs).at(d_rate)
    pre = search.run_sim(p_setup.steps, p_limits, p_rate, d_state if d_state.stable else p_state,
                         output_one=True)
    dec = search.run_sim(d_setup.steps, d_limits, d_rate, d_state, prefilled=True)
    m = min(len(pre.ttft), len(dec.e2e))
    ttft = pre.ttft[:m] + move
    e2e = ttft + dec.e2e[:m]
    tpot = dec.tpot[:m]
    metrics = {
        "ttft": {**{f"p{q}": percentile(ttft, q) for q in (50, 90, 99)}, "mean": float(ttft.mean())},
        "itl": {**{f"p{q}": weighted_percentile(dec.itl_values, dec.itl_weights, q) for q in (50, 90, 99)},
                "mean": dec.summary()["itl"]["mean"]},
        "tpot": {**{f"p{q}": percentile(tpot, q) for q in (50, 90, 99)}, "mean": float(tpot.mean())},
        "e2e": {**{f"p{q}": percentile(e2e, q) for q in (50, 90, 99)}, "mean": float(e2e.mean())},
    }
    stable = not (pre.overloaded or dec.overloaded) and bool(np.isfinite(e2e).all())
    failures, ratios = judge(metrics, search.targets)
    if not stable:
        failures = ["overloaded"] + failures
    pools = [Pool(p_engine, r_p, p_setup.offer.usd_per_gpu_hour),
             Pool(d_engine, r_d, d_setup.offer.usd_per_gpu_hour)]
    return Evaluation("disaggregated", pools, "simulation", stable, metrics, failures, ratios, sim=dec,
                      details={"rate": rate, "kv_transfer_s": move,
                               "goodput_fraction": request_goodput(ttft, tpot, e2e, search.targets),
                               "mean_batch": dec.mean_batch, "peak_kv_fraction": dec.peak_kv_fraction,
                               "preemptions": dec.preemptions + pre.preemptions,
                               "measured_requests": m,
                               "overload_reason": pre.reason or dec.reason},
                      setups=[p_setup, d_setup])


def disaggregated(search, best: Optional[Evaluation]) -> list[Evaluation]:
    """Disaggregated candidates (one per dtype and KV-cache dtype: both pools hold the cache
    alike), simulated where the closed form says they may be cheaper than ``best`` (the
    cheapest colocated deployment meeting the SLOs)."""
    out = []
    for dtype, kv_dtype in ((d, kv) for d in search.q.search.dtypes for kv in search.q.search.kv_dtypes):
        prefill = _cheapest_prefill(search, dtype, kv_dtype)
        if prefill is None:
            continue
        p_cost, p_setup, p_engine, r_p, ttft, move = prefill
        decode = _cheapest_decode(search, dtype, kv_dtype, ttft.get("p90", ttft["mean"]))
        if decode is None:
            continue
        d_cost, d_setup, d_engine, r_d, _ = decode
        if best is not None and p_cost + d_cost >= best.usd_per_hour:
            continue
        for _ in range(_GROW_ROUNDS):
            if r_p * p_engine.gpus + r_d * d_engine.gpus > search.q.search.max_gpus:
                break  # the two pools together may not use more GPUs than the search allows
            search.progress("disaggregated pools", 1.0)
            ev = simulate_pair(search, p_setup, p_engine, r_p, move, d_setup, d_engine, r_d)
            out.append(ev)
            if ev.meets or (best is not None and ev.usd_per_hour >= best.usd_per_hour):
                break
            failed = " ".join(ev.failures)
            if "ttft" in failed or "overloaded" in failed:
                r_p += 1
            if "itl" in failed or "e2e" in failed or "overloaded" in failed:
                r_d += 1
    return out
