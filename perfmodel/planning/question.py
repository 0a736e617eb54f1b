"""A planning question: the model, the traffic, the latency targets and the limits of the search.

One YAML file can hold a whole question (``perfmodel plan --config plan.yaml``)::

    model: mixtral
    set: [top_k=2]                 # --set overrides, as for predict
    traffic:
      rate: 20                     # requests/s, Poisson arrivals
      # burstiness: 0.5            # gamma gaps' shape (vllm bench serve --burstiness): < 1 burstier
      input_len: 1024              # tokens: a number, or percentiles {p50: 512, p90: 4096}
      output_len: 256
      # lengths_file: lengths.csv  # CSV of input,output token counts, sampled with replacement
    slo: {ttft_p90: 1.0, itl_p90: 0.05}   # seconds
    search: {gpus: [h100, h200], max_gpus: 64, dtypes: [bf16], max_num_seqs: [64, 128, 256]}

Command-line flags override the file's values. Times are seconds, rates requests per second.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from pydantic import (
    BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError, field_validator,
    model_validator,
)

from perfmodel.errors import InputError, validation_message
from perfmodel.host_speed import MAX_PROBE_MS
from perfmodel.limits import MAX_LEN
from perfmodel.specs.files import read_mapping

#: Percentile keys a length distribution may be given by, and their standard-normal quantiles.
LENGTH_QUANTILES = {"p50": 0.0, "p90": 1.2815515655446004, "p95": 1.6448536269514722,
                    "p99": 2.3263478740408408}
#: The longest sampled length, tokens (a lognormal's tail is cut here).
MAX_SAMPLED_LEN = 131_072
#: The largest token budget of one engine step a question may give (vLLM's max_num_batched_tokens).
MAX_BATCHED_TOKENS = 1_048_576
#: SLO fields: metric (ttft, itl, e2e) and percentile.
SLO_FIELDS = ("ttft_p50", "ttft_p90", "ttft_p99", "itl_p50", "itl_p90", "itl_p99", "e2e_p90")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Length = Union[PositiveInt, dict[str, PositiveFloat]]


def check_length(value: Any) -> Any:
    """A length as given (a token count, or percentiles {p50: .., p90: ..}), checked: counts are
    integers from 1 to :data:`MAX_LEN`, percentiles numbers from 1 to it, p50 and one more of
    :data:`LENGTH_QUANTILES`, not decreasing. Raises ValueError with one line."""
    if isinstance(value, bool):
        raise ValueError("a token count or percentiles, not true/false")
    if isinstance(value, dict):
        unknown = [k for k in value if k not in LENGTH_QUANTILES]
        if unknown:
            raise ValueError(f"unknown percentile '{unknown[0]}' (known: {', '.join(LENGTH_QUANTILES)})")
        if "p50" not in value or len(value) < 2:
            raise ValueError("give p50 and one more percentile (p90, p95 or p99)")
        for key, tokens in value.items():
            if isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or not 1 <= tokens <= MAX_LEN:
                raise ValueError(f"percentile {key} must be a number of tokens from 1 to {MAX_LEN:,}, got {tokens!r}")
        ordered = [value[k] for k in LENGTH_QUANTILES if k in value]
        if ordered != sorted(ordered):
            raise ValueError("percentiles must not decrease (p50 <= p90 <= p99)")
        return value
    if isinstance(value, (int, float)) and not (float(value).is_integer() and 1 <= value <= MAX_LEN):
        shown = f"{int(value):,}" if math.isfinite(value) and float(value).is_integer() else repr(value)
        raise ValueError(f"a token count must be an integer from 1 to {MAX_LEN:,}, got {shown}")
    return value


#: The steadiest arrivals a plan takes (gamma shape; squared coefficient of variation 1/k).
MAX_BURSTINESS = 1000.0


def burstiness_text(burstiness: float | None) -> str:
    """How a report names arrivals of gamma shape ``burstiness``: "burstiness k", or "" for
    Poisson (k = 1, or None: not stated)."""
    return "" if burstiness is None or burstiness == 1.0 else f"burstiness {burstiness:g}"


class Traffic(_Strict):
    """Requests: arrivals at ``rate`` req/s (Poisson, or gamma gaps of shape ``burstiness``),
    input and output lengths in tokens."""

    rate: PositiveFloat = Field(description="Arrival rate, requests per second.")
    burstiness: float = Field(
        default=1.0, gt=0, le=MAX_BURSTINESS,
        description="Shape of the gamma-distributed gaps between arrivals, as vllm bench serve's "
                    "--burstiness: 1 is Poisson, below 1 burstier, above 1 steadier.")
    input_len: Length = Field(default=1024, description="Prompt tokens: fixed, or {p50: .., p90: ..}.")
    output_len: Length = Field(default=256, description="Output tokens: fixed, or {p50: .., p90: ..}.")
    lengths_file: Optional[Path] = Field(
        default=None, description="CSV of input,output token counts (sampled with replacement).")

    @field_validator("input_len", "output_len", mode="before")
    @classmethod
    def _length(cls, value: Any) -> Any:
        return check_length(value)

    @model_validator(mode="after")
    def _one_source_of_lengths(self) -> "Traffic":
        given = [f"{name} (--{name.replace('_', '-')})" for name in ("input_len", "output_len")
                 if name in self.model_fields_set]
        if self.lengths_file is not None and given:
            raise ValueError(f"lengths_file gives each request's lengths; {' and '.join(given)} would be "
                             "ignored beside it: leave them out")
        return self


class SLO(_Strict):
    """Latency targets, seconds: TTFT and inter-token latency percentiles, E2E p90."""

    ttft_p50: Optional[PositiveFloat] = None
    ttft_p90: Optional[PositiveFloat] = None
    ttft_p99: Optional[PositiveFloat] = None
    itl_p50: Optional[PositiveFloat] = None
    itl_p90: Optional[PositiveFloat] = None
    itl_p99: Optional[PositiveFloat] = None
    e2e_p90: Optional[PositiveFloat] = None

    def targets(self) -> dict[str, float]:
        """The targets given, name -> seconds."""
        return {k: getattr(self, k) for k in SLO_FIELDS if getattr(self, k) is not None}


#: The most GPUs a plan may search (a search beyond takes minutes to say no configuration serves).
MAX_GPUS = 16384


class Search(_Strict):
    """What the search may choose from."""

    gpus: list[str] = Field(default_factory=lambda: ["h100-sxm", "h200-sxm"], min_length=1)
    max_gpus: PositiveInt = Field(default=64, le=MAX_GPUS,
                                  description=f"GPUs of all replicas together, at most (≤ {MAX_GPUS:,}).")
    dtypes: list[str] = Field(default_factory=lambda: ["bf16"], min_length=1)
    kv_dtype: Union[None, str, list[str]] = Field(
        default=None, description="KV cache dtype of the candidates (vLLM's kv_cache_dtype; fp8 "
                                  "stores a cached token in half the bytes), or a list of them to "
                                  "search; default: the weights' unquantized dtype.")
    max_num_seqs: list[PositiveInt] = Field(default_factory=lambda: [64, 128, 256], min_length=1)
    max_batched_tokens: PositiveInt = Field(
        default=8192, le=MAX_BATCHED_TOKENS,
        description="Token budget of one engine step (vLLM max_num_batched_tokens).")
    disaggregation: bool = Field(default=True, description="Also try separate prefill and decode pools.")
    expert_parallel: bool = Field(default=True, description="For a model with experts, also try vLLM's expert "
                                  "parallelism over the TP GPUs and over data-parallel ranks (TP1·DP8+EP, ...).")

    @property
    def kv_dtypes(self) -> list[Optional[str]]:
        """The KV-cache dtypes searched, each once in the order given ([None]: the weights'
        unquantized dtype alone)."""
        given = [self.kv_dtype] if not isinstance(self.kv_dtype, list) else self.kv_dtype
        return list(dict.fromkeys(given)) or [None]
    kv_link_gb_s: Optional[PositiveFloat] = Field(
        default=None, description="KV transfer bandwidth between pools per GPU, 10^9 B/s "
                                  "(default: the GPU's scale-up link).")
    gpu_memory_utilization: Optional[float] = Field(
        default=None, gt=0, le=1, description="Share of each GPU's memory the engine may fill with "
        "weights, activations and KV cache (vLLM's --gpu-memory-utilization); default: the "
        "profile's (options.memory_usable_fraction: 0.9, vLLM's default).")
    kv_cache_memory_gib: Optional[PositiveFloat] = Field(
        default=None, description="KV cache of each GPU, GiB (vLLM's --kv-cache-memory, there in "
        "bytes), in place of what the memory left after the weights and activations holds; "
        "a candidate whose weights and activations leave less than it does not fit.")


class Simulation(_Strict):
    """The discrete-event simulation of each candidate."""

    requests: PositiveInt = Field(default=400, ge=20, le=100_000, description="Measured requests.")
    warmup: NonNegativeInt = Field(default=100, description="Requests simulated before measuring.")
    seed: NonNegativeInt = Field(default=0, le=2**63 - 1, description="Seed of the arrivals and lengths drawn.")


class PlanQuestion(_Strict):
    """The whole planning question."""

    model: str
    set: list[str] = Field(default_factory=list)
    engine: str = "vllm"
    prices: Optional[Path] = None
    traffic: Traffic
    slo: SLO = SLO()
    search: Search = Search()
    simulation: Simulation = Simulation()
    host_probe_ms: Optional[float] = Field(
        default=None, gt=0, le=MAX_PROBE_MS, description="The serving host's probe time (ms, `perfmodel host-probe`): "
        "the profile's host times are scaled to it (perfmodel.host_speed); None: the profile's host.")


#: The section of a question file each of its sections' keys belongs to, to place one given at the top level.
_SECTION_OF = {key: name for name, section in (("traffic", Traffic), ("slo", SLO), ("search", Search),
                                               ("simulation", Simulation))
               for key in section.model_fields if key not in PlanQuestion.model_fields}


def parse_length(text: str, flag: str) -> Length:
    """``"1024"`` -> 1024; ``"p50=512,p90=4096"`` -> {"p50": 512.0, "p90": 4096.0}."""
    text = text.strip()
    if "=" not in text and ":" not in text:
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"bad {flag} '{text}': a token count, or percentiles like p50=512,p90=4096") from None
        try:
            check_length(value)
        except ValueError as exc:
            raise InputError(f"bad {flag} '{text}': {exc}") from None
        return int(value)
    out: dict[str, float] = {}
    for part in text.split(","):
        key, _, raw = part.replace(":", "=").partition("=")
        try:
            out[key.strip()] = float(raw)
        except ValueError:
            raise InputError(f"bad {flag} '{text}': expected percentiles like p50=512,p90=4096") from None
    try:
        check_length(out)
    except ValueError as exc:
        raise InputError(f"bad {flag} '{text}': {exc}") from None
    return out  # type: ignore[return-value]


#: Keys whose value a flag replaces whole (a length's percentiles), rather than merging into.
_REPLACED = ("input_len", "output_len")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _REPLACED:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build_question(config: Path | None, overrides: dict[str, Any]) -> PlanQuestion:
    """The question from a YAML file (optional) with ``overrides`` (nested dict, from flags) on top."""
    data: dict[str, Any] = {}
    if config is not None:
        data = read_mapping(Path(config), InputError,
                            expected="a mapping (model, traffic, slo, search, simulation)")
    strange = [key for key in data if not isinstance(key, str)]
    if strange:
        raise InputError(f"invalid plan question: unknown key {strange[0]!r} in {config}")
    misplaced = [key for key in data if key in _SECTION_OF]  # a section's key at the top level
    if misplaced:
        key = misplaced[0]
        raise InputError(f"invalid plan question: '{key}' belongs under '{_SECTION_OF[key]}:' in {config}")
    if config is not None:
        data = _paths_from(data, Path(config).parent)
    data = _merge(data, overrides)
    if "model" not in data:
        raise InputError("no model: give MODEL, or 'model:' in the --config file")
    if "traffic" in data and not isinstance(data["traffic"], dict):
        raise InputError(f"invalid plan question: traffic must be a mapping (rate, burstiness, input_len, output_len, "
                         f"lengths_file), got {data['traffic']!r}")
    if not isinstance(data.get("traffic"), dict) or "rate" not in data["traffic"]:
        raise InputError("no arrival rate: give --rate (requests/s), or traffic.rate in the --config file")
    try:
        return PlanQuestion(**data)
    except ValidationError as exc:
        raise InputError(f"invalid plan question: {validation_message(exc)}") from None


def _paths_from(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A question file's relative paths (``lengths_file``, ``prices``, a ``model`` config.json) as
    paths from the file's folder, as they read where the file is kept; a model name stays a name."""
    def moved(value: Any) -> Any:
        return str(folder / value) if isinstance(value, str) and value and not Path(value).is_absolute() else value

    out = dict(data)
    if "prices" in out:
        out["prices"] = moved(out["prices"])
    traffic = out.get("traffic")
    if isinstance(traffic, dict) and "lengths_file" in traffic:
        out["traffic"] = {**traffic, "lengths_file": moved(traffic["lengths_file"])}
    model = out.get("model")
    if isinstance(model, str) and ("/" in model or model.endswith(".json")) and Path(moved(model)).exists():
        out["model"] = moved(model)
    return out


class Lengths:
    """The lengths of the requests (tokens), sampled reproducibly; means for the closed form."""

    def __init__(self, traffic: Traffic):
        self.traffic = traffic
        self._pairs: np.ndarray | None = None
        if traffic.lengths_file is not None:
            self._pairs = read_lengths_file(traffic.lengths_file)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (input, output) lengths as integer arrays (outputs at least 2 tokens)."""
        if self._pairs is not None:
            pick = self._pairs[rng.integers(0, len(self._pairs), size=n)]
            return pick[:, 0].copy(), np.maximum(pick[:, 1], 2)
        s = _draw(self.traffic.input_len, n, rng, low=1)
        o = _draw(self.traffic.output_len, n, rng, low=2)
        return s, o

    def means(self) -> tuple[float, float]:
        """Mean input and output tokens (from a large seeded sample when not fixed)."""
        t = self.traffic
        if self._pairs is None and isinstance(t.input_len, int) and isinstance(t.output_len, int):
            return float(t.input_len), float(max(t.output_len, 2))
        s, o = self.sample(20_000, np.random.default_rng(12345))
        return float(s.mean()), float(o.mean())

    def longest(self) -> int:
        """The longest request (input + output tokens) the traffic can hold."""
        if self._pairs is not None:
            return int((self._pairs[:, 0] + np.maximum(self._pairs[:, 1], 2)).max())
        return _upper(self.traffic.input_len) + max(_upper(self.traffic.output_len), 2)

    @property
    def fixed(self) -> bool:
        return self._pairs is None and isinstance(self.traffic.input_len, int) \
            and isinstance(self.traffic.output_len, int)


def _lognormal(spec: dict[str, float]) -> tuple[float, float]:
    """(mu, sigma) of the lognormal through p50 and the highest other percentile given."""
    median = spec["p50"]
    key = [k for k in LENGTH_QUANTILES if k in spec and k != "p50"][-1]
    sigma = math.log(spec[key] / median) / LENGTH_QUANTILES[key]
    return math.log(median), sigma


def _draw(spec: Length, n: int, rng: np.random.Generator, low: int) -> np.ndarray:
    if isinstance(spec, int):
        return np.full(n, max(spec, low), dtype=np.int64)
    mu, sigma = _lognormal(spec)
    values = np.rint(rng.lognormal(mu, sigma, size=n)) if sigma > 0 else np.full(n, round(math.exp(mu)))
    return np.clip(values, low, MAX_SAMPLED_LEN).astype(np.int64)


def _upper(spec: Length) -> int:
    if isinstance(spec, int):
        return spec
    mu, sigma = _lognormal(spec)
    return int(min(MAX_SAMPLED_LEN, round(math.exp(mu + 4.0 * sigma))))


def read_lengths_file(path: Path) -> np.ndarray:
    """(input, output) token counts from a CSV (a header row is optional), as an (n, 2) array."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is no data
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read lengths file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    rows = []
    for i, line in enumerate(text.splitlines()):
        try:
            row = next(csv.reader([line]), [])
        except csv.Error as exc:
            raise InputError(f"lengths file {path}, line {i + 1}: not CSV: {exc}") from None
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2:
            raise InputError(f"lengths file {path}, line {i + 1}: expected two columns, input,output")
        try:
            s, o = float(row[0]), float(row[1])
        except ValueError:
            if i == 0:
                continue  # header
            raise InputError(f"lengths file {path}, line {i + 1}: not numbers: {','.join(row)[:80]}") from None
        if not (1 <= s <= MAX_LEN and 1 <= o <= MAX_LEN and s.is_integer() and o.is_integer()):
            raise InputError(f"lengths file {path}, line {i + 1}: lengths must be integers from 1 to {MAX_LEN:,}")
        rows.append((int(s), int(o)))
    if not rows:
        raise InputError(f"lengths file {path} holds no input,output rows")
    return np.asarray(rows, dtype=np.int64)
