"""The measurement result schema and its JSONL file: validation, atomic appends, resume.

One JSON object per line, one line per sweep point. A point is identified by ``point_id``
(:func:`perfmodel.measuring.points.SweepPoint.point_id`); a file never holds two rows with the same id.

Writes are append-only: a row is serialised to one line, written with a single ``write``,
flushed and ``fsync``-ed, under an exclusive ``flock`` of the file (readers take a shared one),
so two runs writing one file never interleave. A run killed mid-write can leave a partial last
line; before the next append (:func:`repair_tail`) a last line that is a whole JSON object only
lacking its newline gets the newline, anything else is cut off, so the point is measured again.

Readers (:func:`read_rows`) keep a complete last row that lacks its newline, skip lines that are
not JSON objects and warn once per file, in one line (logger ``perfmodel.measuring.results``),
with their count. They keep one row per point id: the sweep never writes a second row for an id
it finds in the file (an oom or error row is as final as an ok one), so duplicates only come
from two runs measuring the same point at once, or from files joined by hand. Of those rows a
measured one (status ok) wins over an oom/error row, which another run holding the GPU may have
caused; among rows of the same kind the last complete one wins.

Units: times in milliseconds (``*_ms``), wall durations in seconds (``*_s``), memory in GiB
(``*_gib``), throughputs in tokens per second.

Fields (schema version 1):

- identity: ``schema_version``, ``point_id``, ``status`` (ok | oom | error), ``error`` (one line or
  null), ``backend`` (hf | vllm), ``model`` (as given), ``display_name``, ``model_type``,
  ``overrides`` (``--set`` items), ``layers`` (``--layers`` or null), ``batch`` (B),
  ``input_len`` (S), ``output_len`` (O), ``full_run``;
- engine settings: ``engine`` = {``cuda_graphs``, ``experts_implementation``,
  ``attn_implementation``, ``dtype``, ``max_cache_len`` (S + O), backend extras}, ``engine_detail``,
  ``patches`` (capture patches applied), ``moe_backend`` (vllm);
- provenance: ``gpu_name``, ``gpu_count``, ``driver``, ``cuda``, ``torch``, ``transformers``,
  ``triton``, ``vllm``, ``python``, ``hostname``, ``date`` (UTC, when the row was written),
  ``git_commit``, ``gpu_sm_count``, ``gpu_memory_bytes``, ``gpu_l2_bytes``, ``gpu_capability``;
- model facts: ``num_hidden_layers``, ``num_experts``, ``top_k``, ``params_total``,
  ``params_active``, ``weights_gib``, ``kv_cache_gib``, ``peak_mem_gib``, ``build_s``;
- metrics (status ok): ``ttft_ms`` (median; ``ttft_p10_ms``, ``ttft_p90_ms``, ``ttft_reps``,
  ``ttft_first_ms``), ``decode_method`` (cuda_graph | kernel_sum | eager | vllm_engine),
  ``decode_samples`` (list of {``step``, ``cache_position``, ``context_len``, ``ms``, ``p10_ms``,
  ``p90_ms``, ``reps``}), ``decode_total_ms`` (sum over the O-1 decode steps), ``e2e_ms``
  (TTFT + decode total), ``itl_ms`` ((E2E - TTFT)/(O - 1)), ``throughput_tok_s`` (B(S+O)/E2E),
  ``output_tok_s`` (B*O/E2E); full runs: ``full_decode_ms``, ``full_e2e_ms``, ``full_itl_ms``,
  ``full_vs_sampled`` (full E2E / sampled E2E);
- profiles: ``prefill_profile`` and ``decode_profile`` = {``kernel_ms``, ``split_ms`` (per
  category of :data:`PROFILE_CATEGORIES`, summing to ``kernel_ms``), ``n_kernels``, ``unit``,
  ``unlinked_ms``, ``top_kernels``; decode adds ``context_len`` and ``graph_ms``, the graph-replay
  time of the same step} or null; a vllm row measured with ``--profile`` has them from the
  engine's runs (:mod:`perfmodel.measuring.vllm_kernels`: ``top_kernels`` as [name, ms, count],
  with ``busy_ms`` and ``wall_ms``, and ``steps`` for decode);
- routing: ``prefill_tokens_per_expert`` (counts per expert of one layer's prefill routing),
  ``routing_layer``, ``prefill_experts_hit`` (distinct experts of each MoE layer in the warm-up
  prefill, in call order), ``decode_experts_hit_mean`` (distinct experts per MoE layer in one
  decode step);
- ``wall_s`` (seconds the point took), ``notes`` (list of strings).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from perfmodel.limits import MAX_LEN
from perfmodel.op_classes import ProfilerCategory

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: appends are not locked
    fcntl = None

SCHEMA_VERSION = 1

STATUSES = ("ok", "oom", "error")
DECODE_METHODS = ("cuda_graph", "kernel_sum", "eager", "vllm_engine")
#: Categories of a profiled step's kernel time (:class:`perfmodel.ops.ProfilerCategory`).
PROFILE_CATEGORIES = tuple(c.value for c in ProfilerCategory)

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_OPT_DICT = (dict, type(None))
_OPT_LIST = (list, type(None))

#: Fields every row carries (any status): name -> accepted types.
REQUIRED: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "point_id": (str,),
    "status": (str,),
    "error": _OPT_STR,
    "backend": (str,),
    "model": (str,),
    "model_type": _OPT_STR,
    "overrides": (list,),
    "layers": _OPT_INT,
    "batch": (int,),
    "input_len": (int,),
    "output_len": (int,),
    "full_run": (bool,),
    # engine settings
    "engine": (dict,),
    # provenance
    "gpu_name": (str,),
    "driver": _OPT_STR,
    "cuda": _OPT_STR,
    "torch": _OPT_STR,
    "transformers": _OPT_STR,
    "vllm": _OPT_STR,
    "date": (str,),
    "git_commit": _OPT_STR,
    "wall_s": _OPT_NUM,
}

#: Keys of the ``engine`` settings dict (all rows).
ENGINE_KEYS = (
    "cuda_graphs",
    "experts_implementation",
    "attn_implementation",
    "dtype",
    "max_cache_len",
)

#: Engine settings that are names (strings) where present.
ENGINE_NAMES = ("experts_implementation", "quantization", "moe_backend", "kv_cache_dtype")

#: Fields required (and non-null) when ``status == "ok"``.
REQUIRED_OK: dict[str, tuple[type, ...]] = {
    "ttft_ms": _NUM,
    "e2e_ms": _NUM,
    "itl_ms": _NUM,
    "decode_total_ms": _NUM,
    "throughput_tok_s": _NUM,
    "output_tok_s": _NUM,
    "decode_method": (str,),
    "decode_samples": (list,),
}

#: Optional fields (may be absent or null) with their types when present.
OPTIONAL: dict[str, tuple[type, ...]] = {
    "display_name": _OPT_STR,
    "num_hidden_layers": _OPT_INT,
    "num_experts": _OPT_INT,
    "top_k": _OPT_INT,
    "ttft_p10_ms": _OPT_NUM,
    "ttft_p90_ms": _OPT_NUM,
    "ttft_reps": _OPT_INT,
    "full_decode_ms": _OPT_NUM,
    "full_e2e_ms": _OPT_NUM,
    "full_itl_ms": _OPT_NUM,
    "full_vs_sampled": _OPT_NUM,
    "prefill_profile": _OPT_DICT,
    "decode_profile": _OPT_DICT,
    "prefill_tokens_per_expert": _OPT_LIST,
    "routing_layer": _OPT_INT,
    "prefill_experts_hit": _OPT_LIST,
    "decode_experts_hit_mean": _OPT_NUM,
    "peak_mem_gib": _OPT_NUM,
    "weights_gib": _OPT_NUM,
    "kv_cache_gib": _OPT_NUM,
    "params_total": _OPT_INT,
    "params_active": _OPT_INT,
    "build_s": _OPT_NUM,
    "patches": _OPT_LIST,
    "notes": _OPT_LIST,
    "gpu_count": _OPT_INT,
    "triton": _OPT_STR,
    "python": _OPT_STR,
    "hostname": _OPT_STR,
    "gpu_sm_count": _OPT_INT,
    "gpu_memory_bytes": _OPT_INT,
    "gpu_l2_bytes": _OPT_INT,
    "gpu_capability": _OPT_STR,
    "moe_backend": _OPT_STR,
    "engine_detail": _OPT_DICT,
    "ttft_first_ms": _OPT_NUM,
    "pass": _OPT_INT,
    "host_probe_ms": _OPT_LIST,
    "host_run": _OPT_DICT,
}

#: Keys of each entry of ``decode_samples``.
SAMPLE_KEYS = ("step", "context_len", "ms", "p10_ms", "p90_ms", "reps")


def _type_name(types: tuple[type, ...]) -> str:
    return "|".join("null" if t is type(None) else t.__name__ for t in types)


def _check(name: str, value: Any, types: tuple[type, ...]) -> str | None:
    if isinstance(value, bool) and bool not in types:
        return f"{name}: expected {_type_name(types)}, got bool"
    if not isinstance(value, types):
        return f"{name}: expected {_type_name(types)}, got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: not finite ({value})"
    return None


def validate_row(row: dict[str, Any]) -> list[str]:
    """Problems with a result row (empty list when it is valid)."""
    if not isinstance(row, dict):
        return ["row: expected a JSON object"]
    errors: list[str] = []
    for name, types in REQUIRED.items():
        if name not in row:
            errors.append(f"{name}: missing")
        elif (msg := _check(name, row[name], types)) is not None:
            errors.append(msg)
    for name, types in OPTIONAL.items():
        if name in row and (msg := _check(name, row[name], types)) is not None:
            errors.append(msg)
    if row.get("status") not in STATUSES:
        errors.append(f"status: expected one of {STATUSES}, got {row.get('status')!r}")
    if row.get("schema_version") != SCHEMA_VERSION and "schema_version" in row:
        errors.append(f"schema_version: expected {SCHEMA_VERSION}")
    engine = row.get("engine")
    if isinstance(engine, dict):
        errors += [f"engine.{k}: missing" for k in ENGINE_KEYS if k not in engine]
        errors += [f"engine.{k}: expected str, got {type(engine[k]).__name__}" for k in ENGINE_NAMES
                   if engine.get(k) is not None and not isinstance(engine[k], str)]
    for name in ("batch", "input_len", "output_len"):
        if isinstance(row.get(name), int) and not 1 <= row[name] <= MAX_LEN:
            errors.append(f"{name}: must be from 1 to {MAX_LEN:,}")
    if isinstance(row.get("layers"), int) and row["layers"] < 1:
        errors.append("layers: must be >= 1")
    if isinstance(row.get("overrides"), list) and not all(isinstance(o, str) for o in row["overrides"]):
        errors.append("overrides: expected KEY=VALUE strings")
    if row.get("status") in ("oom", "error") and not row.get("error"):
        errors.append("error: a one-line message is required for status oom/error")
    if row.get("status") == "ok":
        errors += _validate_ok(row)
    return errors


def has_decode_step(row: dict[str, Any]) -> bool:
    """Whether a row timed decode steps: more than one output token (with one, ``itl_ms`` is 0)."""
    return row["output_len"] > 1


def _validate_ok(row: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    for name, types in REQUIRED_OK.items():
        if row.get(name) is None:
            errors.append(f"{name}: required when status is ok")
        elif (msg := _check(name, row[name], types)) is not None:
            errors.append(msg)
    if errors:
        return errors
    if row["decode_method"] not in DECODE_METHODS:
        errors.append(f"decode_method: expected one of {DECODE_METHODS}")
    for name in ("ttft_ms", "e2e_ms", "throughput_tok_s", "output_tok_s"):
        if row[name] <= 0:
            errors.append(f"{name}: must be > 0")
    if row["e2e_ms"] + 1e-9 < row["ttft_ms"]:
        errors.append("e2e_ms: smaller than ttft_ms")
    if has_decode_step(row) and row["itl_ms"] <= 0:
        errors.append("itl_ms: must be > 0 when output_len > 1")
    for i, sample in enumerate(row["decode_samples"]):
        if not isinstance(sample, dict) or any(k not in sample for k in SAMPLE_KEYS):
            errors.append(f"decode_samples[{i}]: expected keys {SAMPLE_KEYS}")
        elif not (isinstance(sample["ms"], _NUM) and sample["ms"] > 0):
            errors.append(f"decode_samples[{i}].ms: must be > 0")
    for key in ("prefill_profile", "decode_profile"):
        prof = row.get(key)
        if prof:
            errors += _validate_profile(key, prof)
    return errors


def _validate_profile(key: str, prof: Any) -> list[str]:
    if not isinstance(prof, dict):
        return [f"{key}: expected a mapping"]
    split = prof.get("split_ms")
    total = prof.get("kernel_ms")
    if not isinstance(split, dict) or not isinstance(total, _NUM):
        return [f"{key}: expected kernel_ms and split_ms"]
    errors = [f"{key}.split_ms: unknown category {c}" for c in split if c not in PROFILE_CATEGORIES]
    if abs(sum(split.values()) - total) > 1e-3 * max(1.0, total):
        errors.append(f"{key}: categories sum to {sum(split.values()):.4f}, total {total:.4f}")
    return errors


# --------------------------------------------------------------------------- file IO


log = logging.getLogger(__name__)


@dataclass
class ReadResult:
    """Rows read from a result file, with what was skipped."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of unparsable lines
    partial_tail: bool = False  # the last line is a cut-off row (a killed write), skipped
    duplicates: int = 0  # rows dropped because another row of the same point id won

    @property
    def skipped(self) -> int:
        """Unreadable rows skipped: unparsable lines and a cut-off last line."""
        return len(self.bad_lines) + int(self.partial_tail)


@contextmanager
def _locked(fh, exclusive: bool) -> Iterator[None]:
    """Hold an exclusive (writers) or shared (readers) ``flock`` on an open file."""
    if fcntl is None:
        yield
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except OSError:  # a file system without locks: go on unlocked
        yield
        return
    try:
        yield
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The JSON object on one line, or None when it is not one."""
    try:
        row = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return row if isinstance(row, dict) else None


_OK_RANK = {"ok": 1}


def status_rank(row: dict[str, Any]) -> int:
    """How a row ranks among rows of one point id: a measured row (1) over an oom/error one (0)."""
    return _OK_RANK.get(row.get("status"), 0)


def dedupe(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One row per ``point_id`` (see the module docstring for which wins), and how many were dropped.

    Rows keep the place of their id's first row; rows without a string ``point_id`` are all kept.
    """
    slots: list[Any] = []
    best: dict[str, dict[str, Any]] = {}
    dropped = 0
    for row in rows:
        pid = row.get("point_id")
        if not isinstance(pid, str):
            slots.append(row)
            continue
        if pid not in best:
            best[pid] = row
            slots.append(pid)
            continue
        dropped += 1
        if status_rank(row) >= status_rank(best[pid]):
            best[pid] = row
    return [best[s] if isinstance(s, str) else s for s in slots], dropped


_warned: set[tuple] = set()


def _committed(path: Path) -> bool:
    """Whether ``path`` is one of the shipped measurement files, whose repeated measurements of a
    point are kept on purpose (the validation report's "Repeated measurements")."""
    from perfmodel.paths import RESULTS_DIR

    return Path(path).resolve().is_relative_to(RESULTS_DIR.resolve())


def _warn_once(path: Path, data: bytes, result: ReadResult) -> None:
    """One warning line per file content: rows skipped and duplicates dropped (not a shipped
    file's repeats, which no user can act on)."""
    if result.duplicates and _committed(path):
        result = dataclasses.replace(result, duplicates=0)
    if not result.skipped and not result.duplicates:
        return
    key = (str(Path(path).resolve()), len(data), hash(data))
    if key in _warned:
        return
    _warned.add(key)
    parts = []
    if result.skipped:
        where = [f"line {n}" for n in result.bad_lines[:5]] + (["a cut-off last line"] if result.partial_tail else [])
        more = ", ..." if len(result.bad_lines) > 5 else ""
        parts.append(f"skipped {result.skipped} unreadable row{'s' if result.skipped != 1 else ''} "
                     f"({', '.join(where)}{more})")
    if result.duplicates:
        parts.append(f"dropped {result.duplicates} duplicate row{'s' if result.duplicates != 1 else ''} "
                     "(one row kept per point: measured over oom/error, else the last)")
    log.warning("perfmodel: warning: %s: %s", path, "; ".join(parts))


def read_rows(path: Path, *, unique: bool = True, warn: bool = True) -> ReadResult:
    """All complete, parsable rows of ``path`` (missing file: no rows), one per point id.

    A last line without a newline is kept when it is a whole JSON object, else it is a cut-off
    write and is skipped (``partial_tail``); a line that is not a JSON object is skipped and
    reported in ``bad_lines``. ``unique`` keeps one row per point id (``duplicates`` counts the
    others). ``warn`` logs one warning line per file content when anything was skipped or dropped.
    """
    result = ReadResult()
    path = Path(path)
    try:
        with open(path, "rb") as fh, _locked(fh, exclusive=False):
            data = fh.read()
    except FileNotFoundError:
        return result
    lines = data.split(b"\n")
    rows: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        row = _parse(raw)
        if row is not None:
            rows.append(row)
        elif number == len(lines):  # no newline after it: a write cut short
            result.partial_tail = True
        else:
            result.bad_lines.append(number)
    if unique:
        rows, result.duplicates = dedupe(rows)
    result.rows = rows
    if warn:
        _warn_once(path, data, result)
    return result


def _repair(fh) -> str | None:
    """End an unterminated last line of an open ``a+b`` file (see :func:`repair_tail`)."""
    fh.seek(0)
    data = fh.read()
    if not data or data.endswith(b"\n"):
        return None
    keep = data.rfind(b"\n") + 1  # 0 when the only line is unterminated
    if _parse(data[keep:]) is not None:
        fh.write(b"\n")
        action = "newline"
    else:
        fh.truncate(keep)
        action = "cut"
    fh.flush()
    os.fsync(fh.fileno())
    return action


def repair_tail(path: Path) -> str | None:
    """Make ``path`` end with a newline, under the file's lock.

    A last line that is a whole JSON object only lacking its newline gets one (``"newline"``);
    a cut-off write is removed (``"cut"``); None when nothing needed doing.
    """
    path = Path(path)
    if not path.exists():
        return None
    with open(path, "a+b") as fh, _locked(fh, exclusive=True):
        return _repair(fh)


def completed_ids(rows: Iterable[dict[str, Any]]) -> set[str]:
    """Point ids that already have a row (any status: ok, oom and error are all final)."""
    return {r["point_id"] for r in rows if isinstance(r.get("point_id"), str)}


def _jsonable(value: Any) -> Any:
    """Replace non-finite floats by None so the line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row as one line (creates parent folders).

    Under an exclusive lock of the file: the last line is ended or cut (:func:`repair_tail`),
    then the row is written with a single write, flushed and fsync-ed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_jsonable(row), separators=(",", ":"), allow_nan=False) + "\n"
    with open(path, "a+b") as fh, _locked(fh, exclusive=True):
        _repair(fh)
        fh.write(line.encode())
        fh.flush()
        os.fsync(fh.fileno())
