"""The search: GPU type × count × TP/EP/PP/DP layout × dtype × max_num_seqs × replicas.

1. Every (GPU, dtype, layout) gets its step-time tables (:mod:`.steptime`: one data-parallel
   rank's, its MoE layers serving every rank alike) and its memory check (weights, activations
   and the longest request's KV cache must fit); each ``max_num_seqs`` then gets the
   closed-form curve (:mod:`.serving`) of one engine stream.
2. Replicas split the traffic evenly, each request to one at random (Poisson stays Poisson;
   bursty traffic comes to each a little less bursty: :func:`.simulate.arrival_gaps`); a PP replica runs ``pp``
   micro-batch streams, each with 1/pp of the KV cache and of ``max_num_seqs``, and each of a
   replica's dp data-parallel ranks is a stream with a KV cache and ``max_num_seqs`` of its own
   (:attr:`perfmodel.specs.layout.Layout.streams`). The closed
   form gives, per configuration, the fewest replicas not overloaded and the fewest it
   expects to meet every SLO (within a tolerance, since it knows no queueing).
3. Configurations are simulated (:mod:`.simulate`) cheapest first; one whose closed-form cost
   cannot beat the cheapest simulated success is not simulated.
4. Prefill/decode disaggregation (:mod:`.disagg`) is tried per GPU type and dtype.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

from perfmodel.errors import InputError, PerfModelError
from perfmodel.planning.candidates import Engine, Evaluation, Pool, judge, request_goodput
from perfmodel.planning.catalogue import Offer, load_prices, offers
from perfmodel.planning.question import Lengths, PlanQuestion
from perfmodel.planning.serving import ServingCurve, SteadyState, serving_curve
from perfmodel.planning.simulate import EngineLimits, SimResult, arrival_requests, simulate
from perfmodel.planning.steptime import StepTimes, build_step_times, default_graph_tokens, weight_choice
from perfmodel.prediction import DTYPE_BYTES, Workload, check_choice
from perfmodel.profile import EngineProfile, load_profile
from perfmodel.specs.layout import Layout
from perfmodel.specs.model import ModelSpec, load_model
from perfmodel.wording import plural

#: Steps one simulation aims at (its measured requests follow from the expected batch).
STEP_BUDGET = 6000
#: Fewest measured requests of a simulation.
MIN_MEASURED = 60
#: Closed-form latencies within this factor of a target count as "may meet it" (the
#: simulation decides).
CLOSED_FORM_TOLERANCE = 1.3

#: Closed-form evaluations kept per configuration for the report (the first few replica
#: counts, and the one that may meet the SLOs).
_KEPT_PER_CONFIG = 6
#: Configurations as cheap as the best simulated one that are simulated too, so that a tie goes
#: to the one with the most headroom (:func:`choose`), not to the first the search happened on.
_TIES_SIMULATED = 4

Progress = Callable[[str, float], None]


@dataclass
class Setup:
    """One (GPU, dtype, layout, KV-cache dtype): its step tables, or why it cannot serve."""

    offer: Offer
    profile: EngineProfile
    dtype: str
    layout: Layout
    kv_dtype: Optional[str] = None  # None: the weights' unquantized dtype
    steps: Optional[StepTimes] = None
    failure: Optional[str] = None
    curve: Optional[ServingCurve] = None  # colocated, one stream, largest max_num_seqs


@dataclass
class Plan:
    """The search's outcome: every evaluation, the chosen one (None if nothing meets the SLOs)."""

    question: PlanQuestion
    model: ModelSpec
    evaluations: list[Evaluation]
    rejected: list[dict[str, Any]]  # configurations that cannot serve at all, and why
    chosen: Optional[Evaluation]
    mean_in: float
    mean_out: float
    setups: dict[tuple, Setup] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    simulations: int = 0
    search: Any = field(default=None, repr=False)  # the Search, to simulate more points


def layouts(model: ModelSpec, gpus_per_node: int, max_gpus: int, expert_parallel: bool = True) -> list[Layout]:
    """Valid layouts of 1, 2, 4, … GPUs within one node (and ``max_gpus``): TP/EP/PP, and for a
    model with experts (unless ``expert_parallel`` is False) vLLM's expert parallelism over tp
    GPUs (tp > 1) and over dp data-parallel ranks of tp GPUs (dp > 1), each in one pipeline stage."""
    out = []
    top = min(gpus_per_node, max_gpus)
    g = 1
    while g <= top:
        for tp in (d for d in range(1, g + 1) if g % d == 0):
            rest = g // tp
            tried = [Layout(tp, ep, rest // ep) for ep in range(1, rest + 1) if rest % ep == 0]
            if expert_parallel and model.is_moe and g > 1:  # the tp GPUs, as dp ranks of them where rest > 1
                tried.append(Layout(tp, 1, 1, rest, True))
            for layout in tried:
                try:
                    layout.check(model)
                except InputError:
                    continue
                out.append(layout)
        g *= 2
    return out


def stored_choices(model, dtypes: list[str]) -> list[str]:
    """The weight choices as the model runs them: a choice that names no scheme (bf16) is, for a
    checkpoint stored quantized, its checkpoint's scheme (DeepSeek-V3's fp8-block), as predict
    takes it (:meth:`perfmodel.prediction.Workload.stored_as`); each choice once."""
    out = []
    for choice in dtypes:
        asked = Workload(**weight_choice(choice))
        stored = asked.stored_as(model).quant
        out.append(stored if asked.quant is None and stored is not None else choice)
    return list(dict.fromkeys(out))


class Search:
    """State of one planning run (see the module docstring)."""

    def __init__(self, question: PlanQuestion, progress: Optional[Progress] = None,
                 priced: bool = True, graph_tokens: Optional[int] = None, routing_ids: bool = False):
        self.q = question
        self.graph_tokens = graph_tokens  # the engine's largest CUDA graph; None: the profile's
        self.routing_ids = routing_ids  # the experts' kernel handed expert ids (vLLM's routing simulator)
        self.progress = progress or (lambda stage, fraction: None)
        self.model = load_model(question.model, list(question.set))
        for dtype in question.search.dtypes:
            weight_choice(dtype)  # a dtype or a quantization scheme, else refused
        stored = stored_choices(self.model, question.search.dtypes)
        if stored != question.search.dtypes:  # the answer names the weights it runs
            question = question.model_copy(update={"search": question.search.model_copy(update={"dtypes": stored})})
            self.q = question
        for kv_dtype in question.search.kv_dtypes:
            check_choice("kv_dtype", kv_dtype, DTYPE_BYTES, optional=True)
        prices = load_prices(question.prices)
        self.offers = offers(question.search.gpus, prices, question.prices, require_price=priced)
        engine = load_profile(question.engine, self.offers[0].gpu.name).engine
        if engine == "hf":
            raise InputError(f"--engine {question.engine} times transformers' fixed batches; plan simulates "
                             "vLLM's continuous batching: use --engine vllm (or roofline, its uncalibrated "
                             "estimate)")
        self.lengths = Lengths(question.traffic)
        self.mean_in, self.mean_out = self.lengths.means()
        self.longest = self.lengths.longest()
        self.rate = question.traffic.rate
        self.targets = question.slo.targets()
        self.budget = question.search.max_batched_tokens
        bad = [m for m in question.search.max_num_seqs if m > self.budget]
        if bad:
            raise InputError(f"max-num-seqs {bad[0]} is above max-batched-tokens {self.budget} "
                             "(a step must hold one token of every sequence)")
        self.seqs = sorted(set(question.search.max_num_seqs))
        self.setups: dict[tuple, Setup] = {}
        self.evaluations: list[Evaluation] = []
        self.rejected: list[dict[str, Any]] = []
        self.simulations = 0
        self._plans: list = []
        self._sim_cache: dict[tuple, Evaluation] = {}
        self._engine_steps: dict[tuple, tuple[StepTimes, ServingCurve]] = {}
        abort = max(self.targets.values()) * 5.0 if self.targets else 60.0
        self.abort_wait = max(5.0, min(abort, 120.0))

    # --- tables and curves ---------------------------------------------------------------
    def build_setups(self) -> list[Setup]:
        """Step tables of every (GPU, dtype, KV-cache dtype, layout), with those that cannot
        serve rejected."""
        todo = [(offer, dtype, kv_dtype, layout) for offer in self.offers for dtype in self.q.search.dtypes
                for kv_dtype in self.q.search.kv_dtypes
                for layout in layouts(self.model, offer.gpu.gpus_per_node, self.q.search.max_gpus,
                                      self.q.search.expert_parallel)]
        out = []
        for i, (offer, dtype, kv_dtype, layout) in enumerate(todo):
            self.progress("step tables", (i + 1) / max(len(todo), 1))
            out.append(self.setup(offer, dtype, layout, kv_dtype))
        return out

    def setup(self, offer: Offer, dtype: str, layout: Layout, kv_dtype: Optional[str] = None) -> Setup:
        """The step tables, memory check and closed-form curve of one (GPU, dtype, layout) with
        its KV cache in ``kv_dtype`` (None: the weights' unquantized dtype)."""
        key = (offer.name, dtype, layout, kv_dtype)
        if key in self.setups:
            return self.setups[key]
        profile = load_profile(self.q.engine, offer.gpu.name)
        if self.q.search.gpu_memory_utilization is not None:  # the engine's share of each GPU's memory
            profile = profile.with_memory_fraction(self.q.search.gpu_memory_utilization)
        setup = Setup(offer, profile, dtype, layout, kv_dtype)
        try:
            steps = build_step_times(self.model, offer.gpu, profile, dtype, layout,
                                     max_tokens=self.budget, max_seqs=max(self.seqs),
                                     max_context=self.longest, host_probe_ms=self.q.host_probe_ms,
                                     graph_tokens=self.graph_tokens, kv_dtype=kv_dtype,
                                     routing_ids=self.routing_ids)
        except PerfModelError as exc:
            setup.failure = str(exc)
        else:
            kv_gib = self.q.search.kv_cache_memory_gib
            if kv_gib is not None:  # the KV cache the engine is given, beside the weights and activations
                steps = replace(steps, kv_cache_bytes=kv_gib * 2**30)
            setup.steps = steps
            kv, gib = steps.kv_tokens // layout.pp, 2**30
            held = f"does not fit: weights {steps.weights_bytes / gib:.1f} GiB + activations " \
                   f"{steps.activation_bytes / gib:.1f} GiB"
            whole = profile.usable_bytes(offer.gpu, fraction=1.0)
            if kv_gib is not None and steps.weights_bytes + steps.activation_bytes + steps.kv_capacity_bytes > whole:
                setup.failure = (f"{held} + the KV cache asked for ({kv_gib:g} GiB) per GPU exceed the "
                                 f"{whole / gib:.1f} GiB it has")
            elif kv < self.longest:
                setup.failure = (f"{held} per GPU of {steps.usable_bytes / gib:.1f} GiB usable leave KV room "
                                 f"for {kv:,} tokens per stream, under the longest request ({self.longest:,})")
            else:
                setup.curve = serving_curve(steps, self._curve_limits(setup), self.mean_in, self.mean_out)
        if setup.failure:
            self.rejected.append({"gpu": offer.name, "dtype": dtype, "layout": _layout_dict(layout),
                                  **({"kv_dtype": kv_dtype} if kv_dtype else {}), "reason": setup.failure})
        self.setups[key] = setup
        return setup

    def engine_steps(self, setup: Setup, max_num_seqs: int) -> tuple[StepTimes, ServingCurve]:
        """The step tables and closed-form curve of ``setup`` under an engine of ``max_num_seqs``
        sequences: its largest CUDA graph is the engine's default for that many
        (:func:`perfmodel.planning.steptime.default_graph_tokens`; a replay keeps the one it was
        given). The curve is not yet capped at ``max_num_seqs``."""
        assert setup.steps is not None and setup.curve is not None
        if self.graph_tokens is not None:
            return setup.steps, setup.curve
        graph = default_graph_tokens(setup.steps, setup.profile, max_num_seqs, self.budget)
        if graph == setup.steps.graph_tokens:
            return setup.steps, setup.curve
        key = (setup.offer.name, setup.dtype, setup.layout, setup.kv_dtype, graph)
        if key not in self._engine_steps:
            steps = replace(setup.steps, graph_tokens=graph)
            # the closed form's steps holding a prompt hold its first chunk: beyond either graph,
            # they are launched alike, and the curve is the setup's
            alike = min(self.mean_in, self.budget) > setup.steps.graph_tokens
            curve = setup.curve if alike else serving_curve(steps, self._curve_limits(setup), self.mean_in,
                                                            self.mean_out)
            self._engine_steps[key] = steps, curve
        return self._engine_steps[key]

    def _curve_limits(self, setup: Setup) -> EngineLimits:
        """The limits a setup's closed-form curve is built at (the largest max_num_seqs, capped later)."""
        assert setup.steps is not None
        pp = setup.layout.pp
        return EngineLimits(max(1, max(self.seqs) // pp), self.budget, setup.steps.kv_tokens // pp,
                            setup.profile.options.async_scheduling)

    def stream_curve(self, setup: Setup, max_num_seqs: int) -> ServingCurve:
        curve = self.engine_steps(setup, max_num_seqs)[1]
        return curve.capped(max(1, max_num_seqs // setup.layout.pp))

    def closed_form(self, setup: Setup, engine: Engine, replicas: int) -> Evaluation:
        """The closed form of ``replicas`` replicas of ``engine`` at the question's rate."""
        streams = replicas * engine.layout.streams
        state = self.stream_curve(setup, engine.max_num_seqs).at(self.rate / streams)
        pool = Pool(engine, replicas, setup.offer.usd_per_gpu_hour)
        metrics = state.metrics()
        failures, ratios = judge(metrics, self.targets) if state.stable else (["overloaded"], {})
        return Evaluation("colocated", [pool], "closed form", state.stable, metrics, failures, ratios,
                          setups=[setup],
                          details={"batch_per_stream": state.batch, "mixed_step_fraction": state.mixed_fraction,
                                   "saturation_rate_per_replica": self.stream_curve(
                                       setup, engine.max_num_seqs).saturation_rate * engine.layout.streams,
                                   "limit": state.limit})

    # --- simulation ----------------------------------------------------------------------
    def sample(self, rate: float, state: SteadyState, prefilled: bool = False,
               output_one: bool = False, share: float = 1.0) -> tuple[Any, int]:
        """Seeded requests for one stream at ``rate`` sized from the closed form, and the warmup;
        ``share``: the stream's share of the whole traffic, each request its own at random (the
        traffic's burstiness, thinned: :func:`perfmodel.planning.simulate.arrival_gaps`)."""
        sim = self.q.simulation
        batch = state.batch if state.stable and state.batch == state.batch else 1.0
        e2e = state.e2e["mean"] if state.stable and math.isfinite(state.e2e["mean"]) else 10.0
        measured = int(np.clip(STEP_BUDGET * max(batch, 1.0) / max(self.mean_out, 1.0),
                               MIN_MEASURED, sim.requests))
        warmup = int(min(sim.warmup, math.ceil(1.5 * rate * e2e) + 10))
        tail = int(math.ceil(1.2 * rate * e2e) + 10)
        total = warmup + measured + tail
        s, o = self.lengths.sample(total, np.random.default_rng(sim.seed))
        if output_one:
            o = np.ones_like(o)
        return arrival_requests(rate, s, o, seed=sim.seed + 1, prefilled=prefilled,
                                burstiness=self.q.traffic.burstiness, share=share), warmup

    def run_sim(self, steps: StepTimes, limits: EngineLimits, rate: float, state: SteadyState,
                prefilled: bool = False, output_one: bool = False, share: float = 1.0) -> SimResult:
        requests, warmup = self.sample(rate, state, prefilled, output_one, share)
        self.simulations += 1
        return simulate(steps, limits, requests, warmup=warmup, max_steps=20 * STEP_BUDGET,
                        abort_wait_s=self.abort_wait, noise_seed=self.q.simulation.seed + 2)

    def simulated(self, setup: Setup, engine: Engine, replicas: int, rate: Optional[float] = None) -> Evaluation:
        """Simulate ``replicas`` replicas of ``engine`` (one stream stands for all: they are
        alike and get equal shares of the traffic)."""
        rate = self.rate if rate is None else rate
        key = (engine, replicas, rate)
        if key in self._sim_cache:
            return self._sim_cache[key]
        assert setup.steps is not None
        pp = engine.layout.pp
        streams = replicas * engine.layout.streams
        stream_rate = rate / streams
        limits = EngineLimits(max(1, engine.max_num_seqs // pp), self.budget, setup.steps.kv_tokens // pp,
                              setup.profile.options.async_scheduling)
        state = self.stream_curve(setup, engine.max_num_seqs).at(stream_rate)
        result = self.run_sim(self.engine_steps(setup, engine.max_num_seqs)[0], limits, stream_rate, state,
                              share=1.0 / streams)
        metrics = result.summary()
        stable = not result.overloaded and result.completed == len(result.ttft)
        failures, ratios = judge(metrics, self.targets)
        if not stable:
            failures = ["overloaded"] + failures
        pool = Pool(engine, replicas, setup.offer.usd_per_gpu_hour)
        good = request_goodput(result.ttft, result.tpot, result.e2e, self.targets)
        evaluation = Evaluation(
            "colocated", [pool], "simulation", stable, metrics, failures, ratios, sim=result,
            details={"rate": rate, "goodput_fraction": good, "mean_batch": result.mean_batch,
                     "peak_kv_fraction": result.peak_kv_fraction, "preemptions": result.preemptions,
                     "measured_requests": len(result.ttft), "steps": result.steps,
                     "overload_reason": result.reason,
                     "saturation_rate_per_replica": self.stream_curve(
                         setup, engine.max_num_seqs).saturation_rate * engine.layout.streams,
                     "closed_form": state.metrics() if state.stable else None},
            setups=[setup])
        self._sim_cache[key] = evaluation
        return evaluation

    # --- the colocated search --------------------------------------------------------------
    def colocated(self) -> None:
        """Closed form for every configuration, then simulations, cheapest first."""
        plans = []
        max_gpus = self.q.search.max_gpus
        for setup in self.setups.values():
            if setup.curve is None:
                continue
            for seqs in self.seqs:
                engine = Engine(setup.offer.name, setup.dtype, setup.layout, seqs, self.budget,
                                setup.kv_dtype)
                top = max_gpus // engine.gpus
                sat = self.stream_curve(setup, seqs).saturation_rate * setup.layout.streams
                first = max(1, math.floor(self.rate / sat) + 1) if sat > 0 else top + 1
                if first > top:
                    self.rejected.append({"gpu": engine.gpu, "dtype": engine.dtype,
                                          "layout": _layout_dict(engine.layout), "max_num_seqs": seqs,
                                          "label": f"{top}× {engine.label()}", "max_rate_req_s": top * sat,
                                          "reason": f"overloaded: {top} {plural(top, 'replica')} take at "
                                                    f"most {top * sat:.3g} req/s within {max_gpus} "
                                                    f"{plural(max_gpus, 'GPU')}"})
                    continue
                near = None
                for r in range(first, top + 1):
                    ev = self.closed_form(setup, engine, r)
                    if r - first < _KEPT_PER_CONFIG or r == top:
                        self.evaluations.append(ev)
                    if judge(ev.metrics, self.targets, CLOSED_FORM_TOLERANCE)[0] == []:
                        if r - first >= _KEPT_PER_CONFIG and r != top:
                            self.evaluations.append(ev)
                        near = r
                        break
                if near is None:
                    continue
                plans.append((near * engine.gpus * setup.offer.usd_per_gpu_hour, setup, engine, near, first))
        plans.sort(key=lambda p: (p[0], p[2].gpus, -p[2].max_num_seqs))
        self._plans = plans
        self._simulate_cheapest(plans)
        self.evaluations.extend(self._sim_cache.values())

    def verify_options(self) -> None:
        """Simulate, for each weights' dtype and each GPU type that the search offered, its cheapest
        configurations the closed form passes, where none of that option's was simulated meeting
        the SLOs: what the answer sets beside the chosen one (``cheapest_by``) is then simulated
        too, not the closed form's guess."""
        for option in (lambda e: e.weights_label(), lambda e: e.gpu):
            groups: dict[str, list] = {}
            for plan in self._plans:
                groups.setdefault(option(plan[2]), []).append(plan)
            if len(groups) < 2:
                continue
            met = {option(ev.pools[0].engine) for ev in self._sim_cache.values() if ev.meets}
            for name, plans in groups.items():
                if name not in met:
                    self._simulate_cheapest(plans)
        known = {id(ev) for ev in self.evaluations}
        self.evaluations.extend(ev for ev in self._sim_cache.values() if id(ev) not in known)

    def _simulate_cheapest(self, plans: list) -> None:
        """Simulate ``plans`` (cost, setup, engine, replicas the closed form passes, fewest replicas
        that keep up), cheapest first, each grown or shrunk to the fewest replicas meeting the
        SLOs, until the cheapest meeting them is found (and up to :data:`_TIES_SIMULATED` as cheap)."""
        best: Optional[Evaluation] = None
        ties = 0
        for i, (cost, setup, engine, near, first) in enumerate(plans):
            self.progress("simulations", (i + 1) / len(plans))
            if best is not None and (cost > best.usd_per_hour + 1e-9 or ties >= _TIES_SIMULATED):
                continue
            if best is not None:  # as cheap as the best so far: simulated for its headroom
                ties += 1
            r = near
            ev = self.simulated(setup, engine, r)
            if ev.meets:
                while r - 1 >= first:
                    lower = self.simulated(setup, engine, r - 1)
                    if not lower.meets:
                        break
                    r, ev = r - 1, lower
            else:
                top = self.q.search.max_gpus // engine.gpus
                while not ev.meets and r + 1 <= top and (
                        best is None or (r + 1) * engine.gpus * setup.offer.usd_per_gpu_hour < best.usd_per_hour):
                    r += 1
                    ev = self.simulated(setup, engine, r)
            if ev.meets and (best is None or ev.usd_per_hour < best.usd_per_hour):
                best = ev


def _layout_dict(layout: Layout) -> dict[str, int]:
    return {"tp": layout.tp, "ep": layout.ep, "pp": layout.pp, "dp": layout.dp,
            "expert_parallel": layout.expert_parallel}


def choose(evaluations: list[Evaluation]) -> Optional[Evaluation]:
    """The cheapest simulated evaluation meeting every SLO (ties: fewer GPUs, more headroom)."""
    ok = [e for e in evaluations if e.source == "simulation" and e.meets]
    if not ok:
        return None
    return min(ok, key=lambda e: (round(e.usd_per_hour, 6), e.gpus, max(e.ratios.values(), default=0.0)))


def run_search(question: PlanQuestion, progress: Optional[Progress] = None) -> Plan:
    """Answer a planning question (see the module docstring)."""
    from perfmodel.planning.disagg import disaggregated

    started = time.perf_counter()
    search = Search(question, progress)
    search.build_setups()
    t_tables = time.perf_counter()
    search.colocated()
    search.verify_options()
    t_colocated = time.perf_counter()
    if question.search.disaggregation:  # each GPU type's pairs against its own cheapest colocated answer
        best = {offer.name: choose([e for e in search.evaluations if e.pools[0].engine.gpu == offer.name])
                for offer in search.offers}
        search.evaluations.extend(disaggregated(search, {**best, None: choose(search.evaluations)}))
    chosen = choose(search.evaluations)
    done = time.perf_counter()
    return Plan(question=search.q, model=search.model, evaluations=search.evaluations,
                rejected=search.rejected, chosen=chosen, mean_in=search.mean_in,
                mean_out=search.mean_out, setups=search.setups, simulations=search.simulations,
                search=search,
                timings={"tables_s": t_tables - started, "colocated_s": t_colocated - t_tables,
                         "disaggregated_s": done - t_colocated, "total_s": done - started})
