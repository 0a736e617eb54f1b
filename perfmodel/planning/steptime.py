"""The time of one engine step of continuous batching, from the calibrated model, as tables.

A step of a vLLM-style engine runs one forward pass over ``n`` decoding sequences (one token
each, at their own contexts) and ``p`` prompt tokens of prefills (chunks of one or more
prompts). Its time is built from the compiled op graph of :mod:`perfmodel.prediction` (the same
lambdified expressions ``predict`` evaluates, per op), split by what each op's cost follows:

- token ops (projections, experts, norms, collectives…) see every token of the step: their
  time is the decode pass's at B = n + p tokens;
- sequence ops (the attention core, whose work follows each sequence's context, and the
  logits of each sequence's last token) are the decode pass's at (B = n, L = mean context)
  plus, per prompt token, the prefill pass's at (B = 1, S = prompt length) divided by S;
- fixed costs per step and per layer, as the decode pass has them; a step the engine replays
  from a CUDA graph takes at least the host's time for it, per step and per sequence (the
  decode pass's host floor, :func:`perfmodel.prediction.decode_host_floor`); a step holding prompt tokens
  and more tokens than the largest captured CUDA graph (the profile's ``cudagraph_max_tokens``)
  takes at least the host floor of a prefill pass, where the profile has one (vLLM launches
  such a step's pieces and attention from the host; a smaller one it replays from a graph),
  plus the host's time per sequence for each further sequence the step holds (decodes and
  prompt chunks); such a launched step's GPU time also holds the host's work its kernels do not
  overlap, before the first and after the last, and for each further sequence it holds (the
  profile's ``launch_serial_s`` and ``launch_serial_seq_s``,
  :mod:`perfmodel.calibration.fit_launch_serial`);
- a step holding prompt tokens beside decodes adds the host time of an attention the engine
  runs as two paths in it (MLA's: :func:`perfmodel.prediction.split_host`), to the host floor of a
  launched step, serial with the GPU's work in a replayed one.

Which ops are which is read off the compiled model numerically (an op whose decode time
changes with L, or whose prefill time changes when the same tokens are split into more
sequences, is a sequence op). Every table is evaluated once per (GPU, dtype, layout), in a few
vectorized calls. Units: seconds, tokens, bytes (per GPU).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from perfmodel import quantization
from perfmodel import symbols as sym
from perfmodel.errors import InputError
from perfmodel.prediction import DTYPE_BYTES, Workload, compile_model, graph_options, numeric_values
from perfmodel.profile import EngineProfile, LaunchNoise
from perfmodel.specs.hardware import GPUSpec
from perfmodel.specs.layout import Layout
from perfmodel.specs.model import ModelSpec

#: Context lengths (tokens) the decode table is evaluated at; interpolated linearly between.
_CONTEXT_POINTS = 14
#: Sequence counts evaluated exactly up to this many; a geometric grid beyond.
_EXACT_SEQS = 32


def _grid(top: int, points: int, start: int = 1) -> np.ndarray:
    """Integers from ``start`` to ``top``, geometrically spaced (both ends included)."""
    if top <= start:
        return np.array([float(start)])
    return np.unique(np.rint(np.geomspace(start, top, points))).astype(float)


def _op_time(ops: list[dict]) -> dict[str, np.ndarray]:
    """Op name -> time (s) of one pass, summed over the layer groups that hold an op of that
    name (a model of windowed and full-attention layers, or of dense and MoE layers, lists the
    ops of each group: ``attn.core`` once per group)."""
    out: dict[str, np.ndarray] = {}
    for op in ops:
        time = np.asarray(op["time_s"], dtype=float)
        out[op["name"]] = out[op["name"]] + time if op["name"] in out else time
    return out


@dataclass
class StepTimes:
    """Step time tables of one model on one GPU type, dtype and layout (one replica).

    ``token_s[t]``: token ops at t tokens; ``ctx_s[i, j]``: decode sequence ops of
    ``ctx_n[i]`` sequences at mean context ``ctx_L[j]``; ``pre_s_per_token[j]``: prefill
    sequence ops per prompt token of a prompt of ``pre_len[j]`` tokens; ``fixed_s``: per
    step; ``floor_s``: least time of a step holding prompt tokens and more than
    ``graph_tokens`` tokens in all (the largest step replayed from a captured CUDA graph), when
    it holds one sequence; ``floor_seq_s``: what each further sequence (a decode or a prompt
    chunk) adds to that floor; ``piecewise_s``: what a step holding prompt tokens within
    ``graph_tokens`` adds, replayed from piecewise graphs with each layer's attention launched
    from the host; ``host_s`` and ``host_seq_s``: the host's time of a step replayed from a
    graph, per step and per sequence it holds (the step takes at least their sum); ``split_s``:
    what a step holding prompt tokens beside decodes adds on the host (an attention run as two
    paths, :func:`perfmodel.prediction.split_host`; 0 for most models);
    ``serial_s``: what a launched step's GPU time gains from the host's work its kernels do not
    overlap (the scheduling, inputs and first launches before them, the sampling and outputs
    after; the profile's ``launch_serial_s`` at the host's speed), and ``serial_seq_s`` what each
    sequence beyond the first adds to it (``launch_serial_seq_s``; :meth:`serial`); where the
    host's launches set the step, it lies within them.
    ``launch_noise``: how a launched step's host time varies within a run (the profile's,
    :mod:`perfmodel.host_noise`; None: not at all), which the serving simulation draws.
    ``kv_cache_bytes``: the KV cache the engine is given (vLLM's --kv-cache-memory) in place of
    what ``usable_bytes`` leaves after the weights and activations (None). Memory per GPU in
    bytes.
    """

    token_s: np.ndarray
    ctx_n: np.ndarray
    ctx_L: np.ndarray
    ctx_s: np.ndarray
    pre_len: np.ndarray
    pre_s_per_token: np.ndarray
    fixed_s: float
    floor_s: float
    weights_bytes: float
    activation_bytes: float
    kv_bytes_per_token: float
    usable_bytes: float
    token_ops: tuple[str, ...] = ()
    sequence_ops: tuple[str, ...] = ()
    graph_tokens: float = 0.0
    floor_seq_s: float = 0.0
    piecewise_s: float = 0.0
    host_s: float = 0.0
    host_seq_s: float = 0.0
    split_s: float = 0.0
    launch_noise: LaunchNoise | None = None
    serial_s: float = 0.0
    serial_seq_s: float = 0.0
    kv_cache_bytes: float | None = None
    _token_list: list[float] = field(default_factory=list, repr=False)
    _L_list: list[float] = field(default_factory=list, repr=False)
    _n_index: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._token_list = self.token_s.tolist()
        self._L_list = self.ctx_L.tolist()
        self._ctx_rows = self.ctx_s.tolist()
        self._n_list = self.ctx_n.tolist()
        self._pre_len_list = self.pre_len.tolist()
        self._pre_list = self.pre_s_per_token.tolist()

    @property
    def max_tokens(self) -> int:
        """Most tokens one step may hold (the table's length − 1)."""
        return len(self._token_list) - 1

    @property
    def kv_capacity_bytes(self) -> float:
        """The KV cache of one GPU, bytes: ``kv_cache_bytes`` where the engine is given it (vLLM's
        --kv-cache-memory), else the memory left after weights and activations (0 if none is)."""
        if self.kv_cache_bytes is not None:
            return self.kv_cache_bytes
        return max(0.0, self.usable_bytes - self.weights_bytes - self.activation_bytes)

    @property
    def kv_tokens(self) -> int:
        """Tokens the KV cache of one replica holds: :attr:`kv_capacity_bytes` over the KV bytes per token
        of one GPU."""
        return int(self.kv_capacity_bytes // self.kv_bytes_per_token) if self.kv_bytes_per_token > 0 else 0

    @property
    def fits(self) -> bool:
        return self.kv_tokens > 0

    def decode_context(self, n: float, context: float) -> float:
        """Decode sequence ops of ``n`` sequences (fractional allowed) at mean ``context``."""
        if n <= 0:
            return 0.0
        ns, Ls = self._n_list, self._L_list
        if n < ns[0]:
            return self.decode_context(ns[0], context) * n / ns[0]
        i = min(max(bisect.bisect_right(ns, n) - 1, 0), len(ns) - 2) if len(ns) > 1 else 0
        j = min(max(bisect.bisect_right(Ls, context) - 1, 0), len(Ls) - 2)
        u = (context - Ls[j]) / (Ls[j + 1] - Ls[j])
        rows = self._ctx_rows
        lo = rows[i][j] + u * (rows[i][j + 1] - rows[i][j])
        if len(ns) == 1:
            return lo * n / ns[0]
        hi = rows[i + 1][j] + u * (rows[i + 1][j + 1] - rows[i + 1][j])
        w = (n - ns[i]) / (ns[i + 1] - ns[i])
        return lo + w * (hi - lo)

    def prefill_rate(self, length: float) -> float:
        """Prefill sequence ops per prompt token (s/token) of a prompt of ``length`` tokens."""
        xs, ys = self._pre_len_list, self._pre_list
        if len(xs) == 1:
            return ys[0]
        j = min(max(bisect.bisect_right(xs, length) - 1, 0), len(xs) - 2)
        u = (length - xs[j]) / (xs[j + 1] - xs[j])
        return ys[j] + u * (ys[j + 1] - ys[j])

    def tokens(self, t: float) -> float:
        """Token ops at ``t`` tokens (fractional: interpolated)."""
        table = self._token_list
        if t <= 0:
            return 0.0
        i = int(t)
        if i >= len(table) - 1:
            last = len(table) - 1
            return table[last] * t / last
        return table[i] + (t - i) * (table[i + 1] - table[i])

    def floor(self, sequences: np.ndarray | float) -> np.ndarray | float:
        """Least time (s) of a launched step holding ``sequences`` sequences (decodes and prompt
        chunks): the host floor of one, plus the host's time for each further one."""
        return self.floor_s + np.maximum(np.asarray(sequences, dtype=float) - 1.0, 0.0) * self.floor_seq_s

    def host(self, sequences: np.ndarray | float) -> np.ndarray | float:
        """Least time (s) of a step replayed from a CUDA graph holding ``sequences`` sequences
        (decodes and prompt chunks): the host's time for it, per step and per sequence."""
        return self.host_s + np.asarray(sequences, dtype=float) * self.host_seq_s

    def serial(self, sequences: np.ndarray | float) -> np.ndarray | float:
        """What a launched step holding ``sequences`` sequences (decodes and prompt chunks) adds
        to its GPU time, s: the host's work its kernels do not overlap, for the step and for each
        sequence beyond the first."""
        return self.serial_s + np.maximum(np.asarray(sequences, dtype=float) - 1.0, 0.0) * self.serial_seq_s

    def split(self, n: np.ndarray | float, prompt_tokens: np.ndarray | float) -> np.ndarray:
        """Host time (s) a step of ``n`` decodes and ``prompt_tokens`` prompt tokens adds for an
        attention run as two paths: ``split_s`` where it holds both, else 0."""
        return np.where((np.asarray(prompt_tokens) > 0) & (np.asarray(n) > 0), self.split_s, 0.0)

    def parts(self, n: np.ndarray | float, context: float, prompt_tokens: np.ndarray | float,
              prompt_time: np.ndarray | float, prompts: np.ndarray | float = 1.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A step's two resources, vectorized over decode counts ``n`` (and prompt tokens, prompt
        chunks): (GPU time, host time, launched), s. The GPU time is the model's pass over the
        step's tokens (with the host's attention launches of a step replayed from piecewise
        graphs); the host time is its work for the step: a step replayed from a CUDA graph,
        :meth:`host`; a launched step (prompt tokens, more tokens than the largest graph),
        :meth:`floor`, over which its kernels run as they are launched, its GPU time holding the
        host's work they do not overlap (:meth:`serial`). A step alone takes
        the larger of the two (:meth:`steps`)."""
        n, p, p_time, chunks = np.broadcast_arrays(
            np.asarray(n, dtype=float), np.asarray(prompt_tokens, dtype=float),
            np.asarray(prompt_time, dtype=float), np.asarray(prompts, dtype=float))
        total = n + p
        last = len(self.token_s) - 1
        tok = np.where(total <= last, np.interp(np.minimum(total, last), np.arange(last + 1), self.token_s),
                       self.token_s[-1] * total / last)
        j = min(max(bisect.bisect_right(self._L_list, context) - 1, 0), len(self._L_list) - 2)
        u = (context - self.ctx_L[j]) / (self.ctx_L[j + 1] - self.ctx_L[j])
        column = self.ctx_s[:, j] + u * (self.ctx_s[:, j + 1] - self.ctx_s[:, j])
        below = column[0] * n / self.ctx_n[0]
        ctx = np.where(n < self.ctx_n[0], below, np.interp(n, self.ctx_n, column))
        if len(self.ctx_n) > 1:  # beyond the grid: the last segment's slope
            slope = (column[-1] - column[-2]) / (self.ctx_n[-1] - self.ctx_n[-2])
            ctx = np.where(n > self.ctx_n[-1], column[-1] + slope * (n - self.ctx_n[-1]), ctx)
        gpu = tok + ctx + p_time + self.fixed_s
        launched = (p > 0) & (total > self.graph_tokens)
        split = self.split(n, p)
        gpu = np.where((p > 0) & ~launched, gpu + self.piecewise_s + split, gpu)
        sequences = n + np.where(p > 0, chunks, 0.0)
        gpu = np.where(launched, gpu + self.serial(sequences), gpu)
        host = np.where(launched, self.floor(sequences) + split, self.host(sequences))
        return gpu, host, launched

    def steps(self, n: np.ndarray, context: float, prompt_tokens: np.ndarray | float,
              prompt_time: np.ndarray | float, prompts: np.ndarray | float = 1.0) -> np.ndarray:
        """:meth:`step` over an array of decode counts (and prompt tokens, prompt chunks), vectorized."""
        gpu, host, _ = self.parts(n, context, prompt_tokens, prompt_time, prompts)
        return np.maximum(gpu, host)

    def step_parts(self, n: float, context: float, prompt_tokens: float, prompt_time: float,
                   prompts: int = 1) -> tuple[float, float, bool]:
        """One step's (GPU time, host time, launched), s, as :meth:`parts` gives them: ``n``
        decodes at mean ``context``, ``prompt_tokens`` prefill tokens of ``prompts`` prompt
        chunks whose sequence ops take ``prompt_time`` s (Σ tokens · :meth:`prefill_rate`)."""
        gpu = self.tokens(n + prompt_tokens) + self.decode_context(n, context) + prompt_time + self.fixed_s
        if prompt_tokens <= 0:
            return gpu, float(self.host(n)), False
        split = float(self.split(n, prompt_tokens))
        if n + prompt_tokens > self.graph_tokens:
            return gpu + float(self.serial(n + prompts)), float(self.floor(n + prompts)) + split, True
        return gpu + self.piecewise_s + split, float(self.host(n + prompts)), False

    def step(self, n: float, context: float, prompt_tokens: float, prompt_time: float,
             prompts: int = 1) -> float:
        """One step's time alone, s: the larger of its GPU and host times (:meth:`step_parts`)."""
        gpu, host, _ = self.step_parts(n, context, prompt_tokens, prompt_time, prompts)
        return max(gpu, host)


def default_graph_tokens(steps: StepTimes, profile: EngineProfile, max_num_seqs: int, budget: int) -> float:
    """The largest CUDA graph (tokens) an engine with ``max_num_seqs`` sequences and a token
    budget of ``budget`` captures by default: vLLM's min(2·max_num_seqs, max_num_batched_tokens,
    512) (``VllmConfig._set_cudagraph_sizes`` in vLLM 0.26; 512 is the profile's
    ``cudagraph_max_tokens``, the tables' ``graph_tokens``) for an engine that pads its passes to
    captured sizes (:attr:`perfmodel.profile.EngineProfile.pads_cudagraphs`); the tables' own
    otherwise."""
    if not profile.pads_cudagraphs:
        return steps.graph_tokens
    return float(min(steps.graph_tokens, 2 * max_num_seqs, budget))


def _compiled(model: ModelSpec, phase: str, profile: EngineProfile, workload: Workload, gpu: GPUSpec):
    """The compiled model :func:`perfmodel.prediction.evaluate` uses for this workload on ``gpu``
    (its graph options follow the workload's quantization scheme and MoE implementation, and the
    GPU's tuned tile tables)."""
    return compile_model(model, phase, profile, options=graph_options(profile, workload, model, gpu.name))


def weight_choice(choice: str) -> dict[str, str | None]:
    """A plan's weight choice (``search.dtypes``) as a workload's ``dtype`` and ``quant``: a dtype
    (bf16, fp8: fp8 is its scheme's alias) as itself, which a model whose checkpoint is quantized
    runs in its checkpoint's scheme (:meth:`perfmodel.prediction.Workload.stored_as`); a
    quantization scheme's name (w4a16, w8a16-experts, …) as that scheme over bf16 layers; ``none``
    as the model unquantized, every layer in bf16, whatever its checkpoint stores. Unknown choices
    are refused with both lists."""
    schemes = [n for n in quantization.scheme_names() if n != quantization.NO_QUANT]
    if choice in DTYPE_BYTES:
        return {"dtype": choice, "quant": None}
    if choice == quantization.NO_QUANT:
        return {"dtype": quantization.ALIAS_BASE_DTYPE, "quant": quantization.NO_QUANT}
    if choice in schemes:
        return {"dtype": quantization.ALIAS_BASE_DTYPE, "quant": choice}
    shown = f"'{choice}'" if isinstance(choice, str) else repr(choice)
    raise InputError(f"unknown dtype {shown} (known: {', '.join(DTYPE_BYTES)}; or a quantization scheme: "
                     f"{', '.join(schemes)}; or {quantization.NO_QUANT}: unquantized)")


def build_step_times(model: ModelSpec, gpu: GPUSpec, profile: EngineProfile, dtype: str,
                     layout: Layout, *, max_tokens: int, max_seqs: int, max_context: int,
                     host_probe_ms: float | None = None, graph_tokens: int | None = None,
                     kv_dtype: str | None = None, routing_ids: bool = False) -> StepTimes:
    """Evaluate the step tables of one configuration (see the module docstring).

    ``max_tokens``: the step's token budget; ``max_seqs``: most decoding sequences;
    ``max_context``: longest context (tokens) a sequence reaches; ``host_probe_ms``: the host's
    probe time (ms; :mod:`perfmodel.host_speed`), None for the profile's host; ``graph_tokens``:
    the engine's largest captured CUDA graph (tokens), None for the profile's
    (``options.cudagraph_max_tokens``); ``kv_dtype``: the KV cache's dtype, None for the
    unquantized layers' (:attr:`perfmodel.prediction.Workload.kv_dtype`); ``routing_ids``: the
    experts' kernel is handed expert ids (vLLM's routing simulator,
    :attr:`perfmodel.prediction.Workload.routing_ids`). ``dtype``: a dtype or a quantization
    scheme's name (:func:`weight_choice`).
    """
    # one data-parallel rank's steps (B its sequences), its MoE layers serving every rank alike
    workload = Workload(batch=layout.dp, input_len=1, output_len=2, tp=layout.tp, ep=layout.ep,
                        pp=layout.pp, dp=layout.dp, expert_parallel=layout.expert_parallel,
                        **weight_choice(dtype), host_probe_ms=host_probe_ms,
                        graph_tokens=graph_tokens, kv_dtype=kv_dtype, routing_ids=routing_ids).stored_as(model)
    base = numeric_values(model, gpu, profile, workload)
    decode = _compiled(model, "decode", profile, workload, gpu)
    prefill = _compiled(model, "prefill", profile, workload, gpu)

    def run_decode(B, L):
        return decode.evaluate({**base, "B": B, "L": L})

    def run_prefill(B, S):
        return prefill.evaluate({**base, "B": B, "S": S})

    # which ops follow sequences rather than tokens
    d_short, d_long = _op_time(run_decode(4.0, 128.0).ops), _op_time(run_decode(4.0, 4096.0).ops)
    p_one, p_four = _op_time(run_prefill(1.0, 1024.0).ops), _op_time(run_prefill(4.0, 256.0).ops)
    sequence = {n for n in d_short if not np.isclose(d_short[n], d_long[n], rtol=1e-9, atol=0)}
    sequence |= {n for n in p_one if not np.isclose(p_one[n], p_four[n], rtol=1e-9, atol=0)}
    token = tuple(n for n in d_short if n not in sequence)

    # the fixed costs without the host floor, which a step applies on its own (host_s, host_seq_s)
    probe = decode.evaluate({**base, "B": 4.0, "L": 128.0, "t_host_step": 0.0, "t_host_seq": 0.0})
    fixed = float(probe.totals["decode_step_s"]) - float(sum(d_short.values()))

    tokens = np.arange(1, max_tokens + 1, dtype=float)
    by_op = _op_time(run_decode(tokens, 1.0).ops)
    token_s = np.concatenate([[0.0], sum(by_op[n] for n in token) if token else np.zeros_like(tokens)])

    seqs = np.unique(np.concatenate([np.arange(1, min(_EXACT_SEQS, max_seqs) + 1),
                                     _grid(max_seqs, 24)])).astype(float)
    ctx = _grid(max(max_context, 2), _CONTEXT_POINTS)
    if len(ctx) < 2:
        ctx = np.array([1.0, 2.0])
    ops = _op_time(run_decode(seqs[:, None], ctx[None, :]).ops)
    ctx_s = np.broadcast_to(sum(ops[n] for n in sequence if n in ops), (len(seqs), len(ctx))) \
        if sequence & set(ops) else np.zeros((len(seqs), len(ctx)))

    lengths = _grid(max(max_context, 2), _CONTEXT_POINTS)
    pre = run_prefill(1.0, lengths)
    pre_ops = _op_time(pre.ops)
    pre_seq = sum(pre_ops[n] for n in sequence if n in pre_ops) if sequence & set(pre_ops) else np.zeros_like(lengths)
    pre_rate = np.broadcast_to(pre_seq, lengths.shape) / lengths

    # the host floor: a one-token prefill as if no graph were captured; and per further sequence
    floor = float(prefill.evaluate({**base, "B": 1.0, "S": 1.0, "M_graph": 0.0}).totals["prefill_s"])
    floor_seq = float(base.get("t_eager_seq", 0.0)) if profile.options.prefill_eager else 0.0
    # a one-token prefill replayed from piecewise graphs, with and without the host's launches
    replayed = {**base, "B": 1.0, "S": 1.0, "M_graph": max(float(base.get("M_graph", 0.0)), 1.0)}
    one_token = prefill.evaluate(replayed).totals
    piecewise = (float(one_token["prefill_s"])
                 - float(prefill.evaluate({**replayed, "t_piece_layer": 0.0}).totals["prefill_s"]))
    # what a step holding prompt tokens beside decodes adds on the host (an attention run as two)
    split = float(one_token.get("prefill_split_host_s", 0.0))
    # the activations of a pass of the step's budget; an engine that reserves them at start-up does
    # so for a pass of its budget and a sampler of its max_seqs rows (perfmodel.memory)
    act = float(prefill.evaluate({**base, "B": 1.0, "S": float(max_tokens), "M_chunk": float(max_tokens),
                                  "N_seqs": float(max_seqs)}).totals["activation_bytes"])
    kv_ref = float(max_context)
    kv_per_token = float(run_decode(1.0, kv_ref).totals["kv_cache_bytes"]) / kv_ref
    usable = profile.usable_bytes(gpu)
    table = StepTimes(
        token_s=token_s, ctx_n=seqs, ctx_L=ctx, ctx_s=np.array(ctx_s, dtype=float),
        pre_len=lengths, pre_s_per_token=np.array(pre_rate, dtype=float), fixed_s=fixed,
        floor_s=floor, weights_bytes=float(probe.totals["weights_bytes"]), activation_bytes=act,
        kv_bytes_per_token=kv_per_token, usable_bytes=usable, token_ops=token,
        sequence_ops=tuple(sorted(sequence)), graph_tokens=float(base.get("M_graph", 0.0)),
        floor_seq_s=floor_seq, piecewise_s=piecewise, host_s=float(base.get("t_host_step", 0.0)),
        host_seq_s=float(base.get("t_host_seq", 0.0)), split_s=split, launch_noise=profile.latency.launch_noise,
        serial_s=float(base.get(sym.t_launch_serial.name, 0.0)) if profile.options.prefill_eager else 0.0,
        serial_seq_s=float(base.get(sym.t_launch_serial_seq.name, 0.0)) if profile.options.prefill_eager else 0.0)
    if not math.isfinite(table.fixed_s):
        raise ValueError("step time tables hold a non-finite value")
    return table
