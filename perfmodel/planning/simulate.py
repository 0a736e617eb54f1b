"""A discrete-event simulation (simpy) of one engine replica under Poisson or bursty arrivals.

The engine is vLLM's continuous batching: each step takes the running decodes (one token
each), then continues partial prefills and admits waiting requests in arrival order while the
step's token budget (``max_batched_tokens``), the sequence limit (``max_num_seqs``) and the free
KV cache allow; prompts longer than what is left of the budget are chunked over steps. When
the decodes' next tokens do not fit in the KV cache, the latest admitted request is preempted
(its KV freed, recomputed later as a prefill of its prompt and the tokens it had produced, as
vLLM's recompute preemption does). A step's GPU and host times come from :class:`StepTimes`.
Scheduled synchronously, a step takes the larger of the two and hands its tokens over when it
ends. Scheduled asynchronously (vLLM's default), the host schedules and launches step k + 1
while the GPU runs step k, and step k's tokens reach the clients once both are done
(:mod:`perfmodel.planning.pipeline`): a request that arrives during step k joins step k + 2 at
the earliest, unless the engine has nothing else to run. A launched step's host time varies from
one launch to the next as the profile's launch noise says (:mod:`perfmodel.host_noise`), drawn
from a seed.

Metrics as ``vllm bench serve`` reports them: TTFT (arrival to the first token), ITL (every
gap between two tokens of a request), TPOT ((E2E − TTFT)/(O − 1) per request) and E2E, over
the measured requests (after ``warmup`` requests); requests left unfinished when the run is
cut short (overload) count as infinitely late. Everything is seeded; a run is bounded in
requests, steps and the longest wait, so that one candidate takes tens of milliseconds.

A replay of a measured run (:func:`perfmodel.planning.predict.predict_serving` with explicit
arrival times) gives the requests' real submission times, ends the run at an absolute time
``until_s`` where requests still running are aborted (as ``perfmodel measure --serving`` aborts
them at its drain limit), and records every request's token times (``record_tokens``), from
which :meth:`SimResult.run_summary` computes the statistics the way the measured rows are
computed.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from perfmodel.host_noise import HostNoise
from perfmodel.planning.pipeline import gpu_end as step_gpu_end
from perfmodel.planning.steptime import StepTimes

#: Percentiles every latency is reported at.
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class EngineLimits:
    """The scheduler's limits: sequences per step, tokens per step, KV-cache tokens; and
    whether it schedules asynchronously (vLLM's default since 0.11: step k+1 is scheduled and
    launched while step k runs, :mod:`perfmodel.planning.pipeline`)."""

    max_num_seqs: int
    max_batched_tokens: int
    kv_tokens: int
    async_scheduling: bool = False


@dataclass
class Requests:
    """The simulated requests: arrival times (s) and lengths (tokens); ``prefilled`` requests
    arrive with their prompt already in the KV cache (the decode pool of a disaggregated
    deployment), their first token already sent."""

    arrival: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    prefilled: bool = False

    def __len__(self) -> int:
        return len(self.arrival)


def arrival_gaps(n: int, seed: int, burstiness: float = 1.0, share: float = 1.0) -> np.ndarray:
    """``n`` gaps between arrivals, in units of their mean (the stream's rate sets the seconds).

    The whole traffic's gaps are gamma-distributed with shape ``burstiness`` k (``vllm bench
    serve --burstiness``: k = 1 is Poisson, k < 1 burstier, k > 1 steadier; squared coefficient
    of variation 1/k). One stream of it takes each request at random with probability ``share``
    (a replica among equals): its gap is the sum of a geometric number N (mean 1/share) of the
    traffic's gaps, Gamma(N·k, 1/k), so that its squared coefficient of variation is
    share/k + 1 − share (:func:`arrival_scv`). The same seed draws the same gaps at every rate."""
    rng = np.random.default_rng(seed)
    if burstiness == 1.0:  # Poisson, thinned or not
        return rng.exponential(1.0, size=n)
    counts = rng.geometric(share, size=n) if share < 1.0 else np.ones(n)
    return share * rng.gamma(counts * burstiness, 1.0 / burstiness)


def arrival_scv(burstiness: float = 1.0, share: float = 1.0) -> float:
    """Squared coefficient of variation of a stream's gaps (:func:`arrival_gaps`): 1 for Poisson."""
    return share / burstiness + 1.0 - share


def arrival_requests(rate: float, input_len: np.ndarray, output_len: np.ndarray, seed: int,
                     prefilled: bool = False, burstiness: float = 1.0, share: float = 1.0) -> Requests:
    """Requests arriving at ``rate`` req/s (one stream's) for the given lengths, the gaps of
    :func:`arrival_gaps` (Poisson unless ``burstiness`` is not 1). The same seed draws the same
    unit-mean gaps at every rate (times scale as 1/rate), so runs at different rates are
    coupled."""
    gaps = arrival_gaps(len(input_len), seed, burstiness, share)
    return Requests(np.cumsum(gaps) / rate, np.asarray(input_len), np.asarray(output_len), prefilled)


@dataclass
class SimResult:
    """Per-request latencies (s) of the measured requests, inf where unfinished, and the run's
    bookkeeping."""

    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray
    itl_values: np.ndarray  # gap lengths, s
    itl_weights: np.ndarray  # how many tokens saw each gap
    measured_window_s: float
    completed: int
    overloaded: bool
    reason: str
    horizon_s: float
    area: float  # ∫ requests in the system dt over the run, request·s
    sojourn_sum: float  # Σ (finish − arrival) of every finished request, s
    finished_all: int
    arrived_all: int
    steps: int
    preemptions: int
    mean_batch: float
    peak_kv_fraction: float
    output_tokens: int  # tokens produced by measured requests
    arrival: np.ndarray | None = None  # arrival times of the measured requests, s
    token_times: list[np.ndarray] | None = None  # each measured request's token times, s (record_tokens)

    def percentile(self, metric: str, q: float) -> float:
        """Percentile ``q`` (0-100) of ``ttft``, ``tpot``, ``e2e`` or ``itl``, s."""
        if metric == "itl":
            return weighted_percentile(self.itl_values, self.itl_weights, q)
        return percentile(getattr(self, metric), q)

    def summary(self) -> dict[str, dict[str, float]]:
        """{metric: {p50, p90, p99, mean}} in seconds."""
        out = {}
        for metric in ("ttft", "itl", "tpot", "e2e"):
            row = {f"p{q}": self.percentile(metric, q) for q in PERCENTILES}
            if metric == "itl":
                w = self.itl_weights.sum()
                row["mean"] = float((self.itl_values * self.itl_weights).sum() / w) if w else float("nan")
            else:
                values = getattr(self, metric)
                row["mean"] = float(values.mean()) if len(values) else float("nan")
            out[metric] = row
        return out

    def run_summary(self) -> dict:
        """The run's statistics, computed as ``perfmodel measure --serving`` computes a measured
        row's (its ``summarize``) from the recorded token times (``record_tokens=True``).

        The submitted requests are those that arrived before the run ended; a request is
        completed when it produced all its tokens, aborted when it arrived but did not.
        ``ttft``/``itl``/``tpot``/``e2e``: {p50, p90, p99, mean} in seconds (linear
        interpolation) over the completed requests, ITL over every gap between two tokens of a
        completed request; ``output_tokens``: every token produced (aborted requests' included);
        ``window_s``: first arrival to last token; ``output_tok_s`` = output_tokens /
        window_s; ``completion_rate`` = (completed − 1)/(last completion − first completion),
        req/s; ``per_request``: ``submitted_s``, ``ttft_s`` (None without a token), ``e2e_s``
        (None unless completed), ``output_tokens``, per submitted request.
        """
        if self.token_times is None or self.arrival is None:
            raise ValueError("run_summary needs a simulation run with record_tokens=True")
        submitted = [i for i in range(len(self.arrival)) if self.arrival[i] <= self.horizon_s]
        done = [i for i in submitted if math.isfinite(self.e2e[i]) and len(self.token_times[i])]
        per: dict[str, list] = {"ttft": [], "e2e": [], "tpot": [], "itl": []}
        for i in done:
            times = self.token_times[i]
            ttft = float(times[0] - self.arrival[i])
            e2e = float(self.e2e[i])
            per["ttft"].append(ttft)
            per["e2e"].append(e2e)
            if len(times) >= 2:
                per["tpot"].append((e2e - ttft) / (len(times) - 1))
            per["itl"].append(np.diff(times))
        values = {m: np.asarray(v, dtype=float) for m, v in per.items() if m != "itl"}
        values["itl"] = np.concatenate(per["itl"]) if per["itl"] else np.zeros(0)
        out: dict = {}
        for metric in ("ttft", "itl", "tpot", "e2e"):
            xs = values[metric]
            out[metric] = {**{f"p{q}": float(np.percentile(xs, q)) if len(xs) else float("nan")
                              for q in PERCENTILES},
                           "mean": float(xs.mean()) if len(xs) else float("nan")}
        tokens = [len(self.token_times[i]) for i in submitted]
        last = max((float(self.token_times[i][-1]) for i in submitted if len(self.token_times[i])), default=None)
        first = min((float(self.arrival[i]) for i in submitted), default=None)
        window = last - first if last is not None and first is not None else 0.0
        finishes = sorted(float(self.arrival[i] + self.e2e[i]) for i in done)
        span = finishes[-1] - finishes[0] if finishes else 0.0
        out.update({
            "submitted": len(submitted), "completed": len(done), "aborted": len(submitted) - len(done),
            "output_tokens": int(sum(tokens)), "window_s": window,
            "output_tok_s": sum(tokens) / window if window > 0 else None,
            "completion_rate": (len(done) - 1) / span if len(done) > 1 and span > 0 else None,
            "per_request": {
                "submitted_s": [float(self.arrival[i]) for i in submitted],
                "ttft_s": [float(self.token_times[i][0] - self.arrival[i]) if len(self.token_times[i]) else None
                           for i in submitted],
                "e2e_s": [float(self.e2e[i]) if math.isfinite(self.e2e[i]) else None for i in submitted],
                "output_tokens": tokens,
            },
        })
        return out


def percentile(values: np.ndarray, q: float) -> float:
    """Linear-interpolated percentile; with infinite values, the inverted CDF (no inf − inf)."""
    if len(values) == 0:
        return float("nan")
    if np.all(np.isfinite(values)):
        return float(np.percentile(values, q))
    return float(np.percentile(values, q, method="inverted_cdf"))


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Percentile of values each seen ``weights`` times (inverted CDF)."""
    if len(values) == 0 or weights.sum() <= 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    i = int(np.searchsorted(cum, q / 100.0 * cum[-1], side="left"))
    return float(values[order][min(i, len(values) - 1)])


@dataclass
class _State:
    """Mutable per-request arrays (Python lists: cheap scalar access) and engine sums."""

    computed: list = field(default_factory=list)
    target: list = field(default_factory=list)
    generated: list = field(default_factory=list)
    first: list = field(default_factory=list)
    last: list = field(default_factory=list)
    finish: list = field(default_factory=list)
    base: list = field(default_factory=list)  # S + g0 − k0 of a decoding request
    start: list = field(default_factory=list)  # k0 of a decoding request (None: not decoding)
    version: list = field(default_factory=list)
    rate: list = field(default_factory=list)


#: Seconds past 1.5 × the last arrival a run's launch noise is laid out over (the drain).
NOISE_TAIL_S = 30.0


def simulate(steps: StepTimes, limits: EngineLimits, requests: Requests, *, warmup: int = 0,
             max_steps: int = 200_000, abort_wait_s: float = float("inf"), until_s: float | None = None,
             record_tokens: bool = False, noise_seed: int = 0) -> SimResult:
    """Run one replica over ``requests``; the first ``warmup`` are not measured.

    A launched step's host time is the model's times the factor ``steps.launch_noise`` draws for
    it at its start, from ``noise_seed`` (:class:`perfmodel.host_noise.HostNoise`, about the
    run's own level; none without launch noise), so a run is repeatable.

    The run ends when every measured request has finished, or is cut short (``overloaded``)
    when the oldest waiting request has waited ``abort_wait_s``, after ``max_steps`` steps, or
    at the absolute time ``until_s`` (s, on the arrivals' clock), where the requests still
    running are aborted: the tokens of steps that ended by then count, the step in flight's
    do not. ``record_tokens`` keeps every measured request's token times
    (:attr:`SimResult.token_times`, for :meth:`SimResult.run_summary`).
    """
    n = len(requests)
    noise = None
    if steps.launch_noise is not None:  # laid out over the run: to its end, or past the last arrival
        last = float(requests.arrival.max()) if n else 0.0
        span = until_s if until_s is not None else 1.5 * last + NOISE_TAIL_S
        noise = HostNoise(steps.launch_noise, span, noise_seed)
    S = requests.input_len.tolist()
    O = requests.output_len.tolist()
    arrival = requests.arrival.tolist()
    measured = range(min(warmup, n), n)
    st = _State(computed=[0] * n, target=list(S), generated=[0] * n, first=[None] * n,
                last=[None] * n, finish=[None] * n, base=[0] * n, start=[None] * n, version=[0] * n,
                rate=[steps.prefill_rate(s) for s in S])
    if requests.prefilled:
        st.computed = list(S)  # the prompt's KV arrives with the request
    env = simpy.Environment()
    waiting: deque[int] = deque()
    running: OrderedDict[int, None] = OrderedDict()
    prefilling: list[int] = []
    heap: list[tuple[int, int, int]] = []
    sums = {"base": 0, "n_d": 0, "kv_pref": 0, "k": 0, "area": 0.0, "last_t": 0.0, "in_sys": 0,
            "sojourn": 0.0, "finished": 0, "arrived": 0, "measured_done": 0, "preempt": 0,
            "batch_sum": 0, "peak_kv": 0, "delivered": None}
    step_dur: list[float] = []
    step_dec: list[int] = []
    gaps: list[float] = []
    # record_tokens: each step's end time, and per request its tokens as (k0, k1) decode step
    # ranges (tokens at the ends of steps k0 … k1 − 1) or (None, t) single tokens
    step_end: list[float] = []
    pieces: list[list] = [[] for _ in range(n)] if record_tokens else []
    first_measured_arrival = arrival[measured.start] if len(measured) else 0.0
    wake = {"event": None}
    done = env.event()
    outcome = {"overloaded": False, "reason": ""}
    cap, mns, budget_max = limits.kv_tokens, limits.max_num_seqs, limits.max_batched_tokens

    def touch(now: float, delta: int) -> None:
        sums["area"] += sums["in_sys"] * (now - sums["last_t"])
        sums["last_t"] = now
        sums["in_sys"] += delta

    def retire(i: int) -> None:
        """A request whose last token the step just composed makes: it leaves the batch."""
        running.pop(i, None)

    def finish(i: int, now: float) -> None:
        """Its last token reaches the client at ``now``."""
        st.finish[i] = now
        touch(now, -1)
        sums["finished"] += 1
        sums["sojourn"] += now - arrival[i]
        if i >= measured.start:
            sums["measured_done"] += 1
            if sums["measured_done"] == len(measured) and not done.triggered:
                done.succeed()

    def start_decoding(i: int, k: int) -> None:
        g0 = st.generated[i]
        st.start[i] = k
        st.base[i] = S[i] + g0 - k
        sums["base"] += st.base[i]
        sums["n_d"] += 1
        heapq.heappush(heap, (k + O[i] - g0, st.version[i], i))

    def preempt(i: int, now: float) -> None:
        running.pop(i)
        k = sums["k"]
        if st.start[i] is not None:  # decoding
            if record_tokens:
                pieces[i].append((st.start[i], k))
            st.generated[i] = st.base[i] - S[i] + k  # g0 + (k − k0)
            sums["base"] -= st.base[i]
            sums["n_d"] -= 1
            st.start[i] = None
            st.version[i] += 1
            st.last[i] = now
        else:
            prefilling.remove(i)
            sums["kv_pref"] -= st.computed[i]
        st.computed[i] = 0
        st.target[i] = S[i] + st.generated[i]
        st.rate[i] = steps.prefill_rate(st.target[i])
        waiting.appendleft(i)
        sums["preempt"] += 1

    def arrivals():
        for i in range(n):
            delay = arrival[i] - env.now
            if delay > 0:
                yield env.timeout(delay)
            touch(env.now, +1)
            sums["arrived"] += 1
            waiting.append(i)
            ev = wake["event"]
            if ev is not None and not ev.triggered:
                ev.succeed()

    def deliver(step: dict, now: float) -> None:
        """A step's outputs reach the client at ``now``: its tokens, first tokens and finishes."""
        if record_tokens:
            step_end.append(now)
        if step["n_d"] and now >= first_measured_arrival:
            step_dur.append(now - (sums["delivered"] if sums["delivered"] is not None else step["start"]))
            step_dec.append(step["n_d"])
        sums["delivered"] = now
        for i in step["first"]:
            if st.first[i] is None:
                st.first[i] = now
            elif i >= measured.start and st.last[i] is not None:
                gaps.append(now - st.last[i])  # a preempted request's token after recompute
            st.last[i] = now
        for i in step["finished"]:
            st.last[i] = now
            finish(i, now)

    def engine():
        # asynchronous scheduling: the host schedules and launches step k + 1 while the GPU runs
        # step k, and hands over step k's outputs once both are done (perfmodel.planning.pipeline)
        in_flight = None  # the launched step whose outputs are not yet handed over
        gpu_end = 0.0  # when the GPU finishes the last launched step
        while True:
            if not waiting and not running:
                if in_flight is not None:
                    yield env.timeout(max(gpu_end - env.now, 0.0))
                    deliver(in_flight, env.now)
                    in_flight = None
                    continue
                wake["event"] = env.event()
                yield wake["event"]
                wake["event"] = None
                sums["delivered"] = None
            now = env.now
            if waiting and now - arrival[waiting[0]] > abort_wait_s:
                outcome.update(overloaded=True, reason=f"a request waited over {abort_wait_s:g} s to start")
                done.succeed()
                return
            if sums["k"] >= max_steps:
                outcome.update(overloaded=True, reason=f"cut after {max_steps} steps")
                done.succeed()
                return
            k = sums["k"]
            # the decodes' next tokens must fit: preempt the latest admitted until they do
            while running and sums["base"] + sums["n_d"] * k + sums["kv_pref"] > cap:
                preempt(next(reversed(running)), now)
            n_d = sums["n_d"]
            budget = budget_max - n_d
            free = cap - (sums["base"] + n_d * k) - sums["kv_pref"]
            chunks: list[tuple[int, int]] = []
            for i in prefilling:
                c = min(st.target[i] - st.computed[i], budget, free)
                if c > 0:
                    chunks.append((i, c))
                    budget -= c
                    free -= c
            while waiting and budget > 0 and len(running) < mns:
                i = waiting[0]
                if requests.prefilled and st.target[i] == S[i] and st.generated[i] == 0:
                    need = S[i] + 1  # its prompt's KV and the next token
                    if need > free:
                        break
                    waiting.popleft()
                    running[i] = None
                    st.generated[i] = 1  # the first token came from the prefill pool
                    st.first[i] = now  # admitted: the decode pool's wait ends
                    st.last[i] = arrival[i]
                    if record_tokens:
                        pieces[i].append((None, arrival[i]))
                    start_decoding(i, k)
                    free -= need
                    budget -= 1
                    n_d += 1
                    continue
                c = min(st.target[i] - st.computed[i], budget)
                if c > free:
                    break
                waiting.popleft()
                running[i] = None
                prefilling.append(i)
                chunks.append((i, c))
                budget -= c
                free -= c
            if n_d == 0 and not chunks:
                if prefilling and len(running) > 1:  # stalled partial prefills hold the cache
                    preempt(prefilling[-1], now)
                    continue
                if in_flight is not None:  # what is in flight may free the cache
                    yield env.timeout(max(gpu_end - now, 0.0))
                    deliver(in_flight, env.now)
                    in_flight = None
                    continue
                if running or waiting:
                    outcome.update(overloaded=True, reason="a request does not fit in the KV cache")
                    done.succeed()
                    return
                continue
            step = {"n_d": n_d, "first": [], "finished": [], "start": now}  # handed over when it is done
            p = 0
            p_time = 0.0
            for i, c in chunks:
                p += c
                p_time += c * st.rate[i]
            ctx = (sums["base"] + n_d * k) / n_d if n_d else 0.0
            gpu, host, launched = steps.step_parts(n_d, ctx, p, p_time, len(chunks))
            if launched and noise is not None:
                host *= noise.factor(now)
            used = sums["base"] + n_d * k + sums["kv_pref"] + p
            if used > sums["peak_kv"]:
                sums["peak_kv"] = used
            # what the step does to the engine's state, known to the scheduler of the next one
            k += 1
            sums["k"] = k
            sums["batch_sum"] += n_d
            while heap and heap[0][0] <= k:
                _, ver, i = heapq.heappop(heap)
                if ver != st.version[i]:
                    continue
                sums["base"] -= st.base[i]
                sums["n_d"] -= 1
                if record_tokens:
                    pieces[i].append((st.start[i], k))
                st.start[i] = None
                st.generated[i] = O[i]
                retire(i)
                step["finished"].append(i)
            for i, c in chunks:
                st.computed[i] += c
                sums["kv_pref"] += c
                if st.computed[i] < st.target[i]:
                    continue
                sums["kv_pref"] -= st.computed[i]
                prefilling.remove(i)
                st.generated[i] += 1
                step["first"].append(i)
                if record_tokens:
                    pieces[i].append((k - 1, k))  # its token comes with the step's outputs
                if st.generated[i] >= O[i]:
                    retire(i)
                    step["finished"].append(i)
                else:
                    start_decoding(i, k)
            # when it runs
            if not limits.async_scheduling:
                yield env.timeout(max(gpu, host))
                deliver(step, env.now)
                continue
            launch_end = now + host
            previous = gpu_end if in_flight is not None else now
            gpu_end = step_gpu_end(previous, launch_end, gpu, launched)
            if in_flight is not None:
                yield env.timeout(max(launch_end, previous) - now)
                deliver(in_flight, env.now)
            else:
                yield env.timeout(host)
            in_flight = step

    def deadline():
        yield env.timeout(max(until_s - env.now, 0.0))
        if not done.triggered:
            outcome.update(overloaded=True, reason=f"requests still running at {until_s:g} s were aborted")
            done.succeed()

    env.process(arrivals())
    env.process(engine())
    if until_s is not None:
        env.process(deadline())
    if len(measured):
        env.run(until=done)
    horizon = env.now
    touch(horizon, 0)
    token_times = None
    if record_tokens:
        ends = np.asarray(step_end, dtype=float)
        k_end = sums["k"]
        token_times = []
        for i in range(measured.start, n):
            if st.start[i] is not None:  # still decoding at the end: the steps that ended
                pieces[i].append((st.start[i], k_end))
            parts = [ends[k0:k1] if k0 is not None else np.array([k1]) for k0, k1 in pieces[i]]
            token_times.append(np.concatenate(parts) if parts else np.zeros(0))

    idx = np.arange(measured.start, n)
    arr = np.asarray(arrival)[idx]
    first = np.array([st.first[i] if st.first[i] is not None else np.inf for i in idx], dtype=float)
    fin = np.array([st.finish[i] if st.finish[i] is not None else np.inf for i in idx], dtype=float)
    out_len = np.asarray(O)[idx].astype(float)
    ttft = first - arr  # prefilled requests: the wait to be admitted to the decode pool
    e2e = fin - arr
    with np.errstate(invalid="ignore"):
        tpot = np.where(np.isfinite(fin), (fin - np.where(requests.prefilled, arr, first)) /
                        np.maximum(out_len - 1, 1), np.inf)
    values = np.asarray(step_dur + gaps, dtype=float)
    weights = np.asarray(step_dec + [1] * len(gaps), dtype=float)
    done_mask = np.isfinite(fin)
    window = float(fin[done_mask].max() - arr.min()) if done_mask.any() else horizon
    return SimResult(
        ttft=ttft, tpot=tpot, e2e=e2e, itl_values=values, itl_weights=weights,
        measured_window_s=window, completed=int(done_mask.sum()), overloaded=outcome["overloaded"],
        reason=outcome["reason"], horizon_s=horizon, area=sums["area"], sojourn_sum=sums["sojourn"],
        finished_all=sums["finished"], arrived_all=sums["arrived"], steps=sums["k"],
        preemptions=sums["preempt"], mean_batch=sums["batch_sum"] / max(sums["k"], 1),
        peak_kv_fraction=sums["peak_kv"] / cap if cap else float("inf"),
        output_tokens=int(out_len[done_mask].sum()), arrival=arr, token_times=token_times)
