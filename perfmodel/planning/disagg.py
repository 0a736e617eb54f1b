"""Prefill/decode disaggregation: a pool of prefill replicas and a pool of decode replicas.

Prefill replicas run prompts only (their steps hold no decodes, so a long prompt never stalls
anyone's tokens); each request's KV cache then crosses to a decode replica, each prefill GPU
sending its share and each decode GPU receiving its own, over a link: the GPU's scale-up link
where both pools are of one GPU type and fit one NVLink domain (``gpus_per_node``), else the
network bandwidth per GPU the question gives (``search.kv_link_gb_s``; without it such pairs are
not built: the GPU specs state no network). The link is a queue: a GPU sends or receives one
request's share at a time, so at utilisation ρ of its busier end (requests per second of a replica
× seconds per share) a request waits ρ·t/(2(1 − ρ)) on average before its share of t seconds
(M/D/1), and at ρ ≥ 1 the pair cannot keep up. TTFT = prefill pool's TTFT + the transfer and its
wait; ITL and TPOT are the decode pool's; E2E = TTFT + the decode pool's time. Each pool is sized
by the closed form, cheapest first, then both are simulated and grown until the SLOs hold. Under
bursty traffic each pool's replicas take the requests at random (:func:`.simulate.arrival_gaps`),
the decode pool's as they arrive (the prefill pool does not smooth them: the conservative side).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from perfmodel.planning.candidates import Engine, Evaluation, Pool, judge, request_goodput
from perfmodel.planning.serving import serving_curve
from perfmodel.planning.simulate import EngineLimits, arrival_scv, percentile, weighted_percentile

#: Simulation rounds that may grow a pool before giving up.
_GROW_ROUNDS = 4


def _only(targets: dict[str, float], metrics: tuple[str, ...]) -> dict[str, float]:
    return {k: v for k, v in targets.items() if k.split("_")[0] in metrics}


def transfer_s(search, setup) -> float:
    """Seconds to move one GPU's share of a mean prompt's KV cache over its link: the
    roofline's link transfer (:func:`perfmodel.roofline.transfer_time`, the profile's link
    efficiency) of the KV bytes one GPU of ``setup``'s layout holds for the prompt, at the GPU's
    scale-up link or ``search.kv_link_gb_s``."""
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


def kv_link(search, p_setup, r_p: int, d_setup, r_d: int, rate: float) -> dict[str, float]:
    """The KV transfer of a pair at ``rate`` req/s: ``transfer_s`` (one request's, the slower of
    a prefill GPU's send and a decode GPU's receive), ``utilization`` ρ of the busier end (each
    GPU of a replica moves a share of every request of its replica) and ``wait_s``, the mean wait
    before a transfer, ρ·t/(2(1 − ρ)) (M/D/1; infinite at ρ ≥ 1)."""
    send, receive = transfer_s(search, p_setup), transfer_s(search, d_setup)
    rho = max(rate / r_p * send, rate / r_d * receive)
    t = max(send, receive)
    wait = rho * t / (2 * (1 - rho)) if rho < 1 else float("inf")
    return {"transfer_s": t, "utilization": rho, "wait_s": wait}


def link_allowed(search, p_setup, d_setup, gpus: int) -> bool:
    """Whether a pair's KV can cross between its pools: over the network bandwidth the question
    gives, or over the scale-up link where both pools are of one GPU type within one NVLink
    domain (``gpus`` of the two pools together at most the GPU's ``gpus_per_node``)."""
    if search.q.search.kv_link_gb_s:
        return True
    return p_setup.offer.name == d_setup.offer.name and gpus <= p_setup.offer.gpu.gpus_per_node


def _cheapest_prefill(search, dtype: str, kv_dtype: Optional[str], gpu: Optional[str]):
    targets = _only(search.targets, ("ttft",))
    best = None
    for setup in search.setups.values():
        if setup.dtype != dtype or setup.kv_dtype != kv_dtype or setup.curve is None or gpu not in (
                None, setup.offer.name):
            continue
        pp = setup.layout.pp
        limits = EngineLimits(max(search.seqs), search.budget, setup.steps.kv_tokens // pp,
                              setup.profile.options.async_scheduling)
        curve = serving_curve(setup.steps, limits, search.mean_in, search.mean_out, kind="prefill")
        move = transfer_s(search, setup)
        engine = Engine(setup.offer.name, dtype, setup.layout, max(search.seqs), search.budget, kv_dtype)
        for r in range(1, search.q.search.max_gpus // engine.gpus + 1):
            share = 1.0 / (r * setup.layout.streams)
            state = curve.at(search.rate * share, arrival_scv(search.q.traffic.burstiness, share))
            if not state.stable:
                continue
            ttft = {k: v + move for k, v in state.ttft.items()}
            if not judge({"ttft": ttft}, targets, 1.0)[0]:
                cost = r * engine.gpus * setup.offer.usd_per_gpu_hour
                if best is None or cost < best[0]:
                    best = (cost, setup, engine, r, ttft, move)
                break
    return best


def _cheapest_decode(search, dtype: str, kv_dtype: Optional[str], ttft_p90: float, gpu: Optional[str]):
    targets = _only(search.targets, ("itl",))
    e2e_target = search.targets.get("e2e_p90")
    best = None
    for setup in search.setups.values():
        if setup.dtype != dtype or setup.kv_dtype != kv_dtype or setup.curve is None or gpu not in (
                None, setup.offer.name):
            continue
        pp = setup.layout.pp
        limits = EngineLimits(max(1, max(search.seqs) // pp), search.budget, setup.steps.kv_tokens // pp,
                              setup.profile.options.async_scheduling)
        full = serving_curve(setup.steps, limits, search.mean_in, search.mean_out, kind="decode")
        for seqs in search.seqs:
            curve = full.capped(max(1, seqs // pp))
            engine = Engine(setup.offer.name, dtype, setup.layout, seqs, search.budget, kv_dtype)
            for r in range(1, search.q.search.max_gpus // engine.gpus + 1):
                state = curve.at(search.rate / (r * setup.layout.streams))
                if not state.stable or judge({"itl": state.itl}, targets, 1.0)[0]:
                    continue
                if e2e_target and ttft_p90 + state.e2e["p90"] > e2e_target:
                    continue
                cost = r * engine.gpus * setup.offer.usd_per_gpu_hour
                if best is None or cost < best[0]:
                    best = (cost, setup, engine, r, state)
                break
    return best


def simulate_pair(search, p_setup, p_engine, r_p, d_setup, d_engine, r_d,
                  rate: Optional[float] = None) -> Evaluation:
    """Both pools simulated on the same seeded requests; their latencies joined per request, each
    request's KV transfer and its mean wait on the link (:func:`kv_link`) between them."""
    rate = search.rate if rate is None else rate
    link = kv_link(search, p_setup, r_p, d_setup, r_d, rate)
    move = link["transfer_s"] + link["wait_s"]
    pp_p, pp_d = p_engine.layout.pp, d_engine.layout.pp
    p_share, d_share = 1.0 / (r_p * p_engine.layout.streams), 1.0 / (r_d * d_engine.layout.streams)
    p_rate, d_rate = rate * p_share, rate * d_share
    p_limits = EngineLimits(max(search.seqs), search.budget, p_setup.steps.kv_tokens // pp_p,
                            p_setup.profile.options.async_scheduling)
    d_limits = EngineLimits(max(1, d_engine.max_num_seqs // pp_d), search.budget,
                            d_setup.steps.kv_tokens // pp_d, d_setup.profile.options.async_scheduling)
    p_state = serving_curve(p_setup.steps, p_limits, search.mean_in, search.mean_out, "prefill").at(
        p_rate, arrival_scv(search.q.traffic.burstiness, p_share))
    d_state = serving_curve(d_setup.steps, d_limits, search.mean_in, search.mean_out,
                            "decode").capped(d_limits.max_num_seqs).at(d_rate)
    pre = search.run_sim(p_setup.steps, p_limits, p_rate, d_state if d_state.stable else p_state,
                         output_one=True, share=p_share)
    dec = search.run_sim(d_setup.steps, d_limits, d_rate, d_state, prefilled=True, share=d_share)
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
        failures = ["overloaded" + (" (the KV link)" if link["utilization"] >= 1 else "")] + failures
    pools = [Pool(p_engine, r_p, p_setup.offer.usd_per_gpu_hour),
             Pool(d_engine, r_d, d_setup.offer.usd_per_gpu_hour)]
    return Evaluation("disaggregated", pools, "simulation", stable, metrics, failures, ratios, sim=dec,
                      details={"rate": rate, "kv_transfer_s": link["transfer_s"], "kv_wait_s": link["wait_s"],
                               "kv_link_utilization": link["utilization"],
                               "goodput_fraction": request_goodput(ttft, tpot, e2e, search.targets),
                               "mean_batch": dec.mean_batch, "peak_kv_fraction": dec.peak_kv_fraction,
                               "preemptions": dec.preemptions + pre.preemptions,
                               "measured_requests": m,
                               "overload_reason": pre.reason or dec.reason},
                      setups=[p_setup, d_setup])


def disaggregated(search, best: dict[Optional[str], Optional[Evaluation]]) -> list[Evaluation]:
    """Disaggregated candidates, one per dtype and KV-cache dtype (both pools hold the cache
    alike) and GPU type (and of any two types where the question gives the network's bandwidth,
    ``kv_link_gb_s``), simulated where the closed form says they may be cheaper than ``best[gpu]``,
    the cheapest colocated deployment meeting the SLOs on that GPU type (``best[None]``: on any)."""
    out = []
    gpus = [offer.name for offer in search.offers] + ([None] if search.q.search.kv_link_gb_s else [])
    for dtype, kv_dtype, gpu in ((d, kv, g) for d in search.q.search.dtypes for kv in search.q.search.kv_dtypes
                                 for g in gpus):
        prefill = _cheapest_prefill(search, dtype, kv_dtype, gpu)
        if prefill is None:
            continue
        p_cost, p_setup, p_engine, r_p, ttft, _ = prefill
        decode = _cheapest_decode(search, dtype, kv_dtype, ttft.get("p90", ttft["mean"]), gpu)
        if decode is None:
            continue
        d_cost, d_setup, d_engine, r_d, _ = decode
        beat = best.get(gpu)
        if beat is not None and p_cost + d_cost >= beat.usd_per_hour:
            continue
        for _ in range(_GROW_ROUNDS):
            used = r_p * p_engine.gpus + r_d * d_engine.gpus
            if used > search.q.search.max_gpus or not link_allowed(search, p_setup, d_setup, used):
                break  # more GPUs than the search allows, or pools no link joins
            search.progress("disaggregated pools", 1.0)
            ev = simulate_pair(search, p_setup, p_engine, r_p, d_setup, d_engine, r_d)
            out.append(ev)
            if ev.meets or (beat is not None and ev.usd_per_hour >= beat.usd_per_hour):
                break
            failed = " ".join(ev.failures)
            if "ttft" in failed or "overloaded" in failed:
                r_p += 1
            if "itl" in failed or "e2e" in failed or "overloaded" in failed:
                r_d += 1
    return out
