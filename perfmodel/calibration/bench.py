"""Microbenchmarks of the kernels MoE inference runs, written as tidy CSV tables.

``run_bench(out_dir, quick=False, budget_s=450)`` writes into ``out_dir``:

- ``gemm.csv`` - dense GEMM, bf16 ``F.linear`` and fp8 ``torch._scaled_mm``, M x (N, K) of the zoo;
- ``grouped_gemm.csv`` - expert grouped GEMM as transformers calls it (bf16; fp8 scaled variant);
- ``moe_block.csv`` - the whole transformers MoE block per experts implementation;
- ``attention.csv`` - SDPA prefill/decode as transformers calls it, and whole attention modules
  (MLA for DeepSeek-V2) with a StaticCache;
- ``memory.csv`` - RMSNorm, SiLU-and-mul, residual add, device copy, CUDA-graph kernel cost;
- ``metadata.json`` - GPU, driver, CUDA, torch/transformers versions, date, git commit, the mode,
  time spent per stage and whether the budget cut it short.

Every row: family, op, dtype, shape columns, ``median_ms``, ``p10_ms``, ``p90_ms``, ``n_reps``,
timing ``method`` (``cuda_graph``: ``inner`` calls per replay; ``cuda_events``; ``wall`` on CPU),
``flops``, minimal ``bytes``, achieved ``tflops`` (TFLOP/s) and ``tbs`` (TB/s), ``rotate`` (input
copies cycled to keep the working set out of L2), ``status`` (ok / oom / error / skipped).

Modes: ``full`` (default on a GPU; <= 8 min with the default budget), ``quick`` (~1 min smoke),
``tiny`` (automatic on CPU: tiny shapes; fp8, grouped fp8 and CUDA graphs are skipped).
Stages run in the order memory, gemm, grouped, attention, moe_block, grouped_fp8 (the least
proven kernel last); each stage gets a share of the budget, unused time rolls over.

Tables already in ``out_dir`` are never truncated before new data exists: a table is written to
``<table>.partial`` in the same folder and replaces the earlier one (``os.replace``) when the
last stage writing it ends (grouped_gemm.csv after grouped_fp8). A killed run leaves the earlier
tables and metadata as they were, and what it measured in the ``.partial`` files. When a stage
fails (an exception, a fatal device error) an earlier table is kept and the new rows stay in
its ``.partial`` file; a budget cutting a stage short is not a failure. ``metadata.json`` is
rewritten once a table has been replaced: it describes this run, lists under ``earlier`` the
tables still from an earlier run (with that run's date, commit, mode and GPU) and under
``kept`` those kept because a stage failed. Tables of stages not run are left alone.

It needs torch, transformers and a CUDA GPU and refuses (InputError) without them; the tiny
CPU mode needs ``allow_cpu=True`` (``--allow-cpu``, or ``PERFMODEL_ALLOW_CPU=1``).

Run: ``python -m perfmodel.calibration.bench --out DIR [--quick] [--budget-s S]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

STAGES = ("memory", "gemm", "grouped", "attention", "moe_block", "grouped_fp8")
TABLES = {
    "gemm": "gemm.csv",
    "grouped": "grouped_gemm.csv",
    "moe_block": "moe_block.csv",
    "attention": "attention.csv",
    "memory": "memory.csv",
}
#: The table each stage writes (a key of TABLES).
STAGE_TABLE = {"memory": "memory", "gemm": "gemm", "grouped": "grouped", "attention": "attention",
               "moe_block": "moe_block", "grouped_fp8": "grouped"}
DEFAULT_BUDGET_S = 450.0
QUICK_BUDGET_S = 60.0
#: What works without a GPU, said when the bench refuses to run on one without.
NO_GPU_HINT = "the committed tables refit with `perfmodel calibrate fit`"


def default_out_dir() -> Path:
    from perfmodel.paths import CALIBRATION_DATA_DIR
    from perfmodel.measuring.env import gpu_short_name

    return CALIBRATION_DATA_DIR / gpu_short_name()


def run_bench(
    out_dir: Path | str,
    quick: bool = False,
    budget_s: float | None = None,
    mode: str | None = None,
    stages: tuple[str, ...] = STAGES,
    log: Callable[[str], None] | None = None,
    allow_cpu: bool = False,
) -> dict[str, Any]:
    """Run the benchmark stages into ``out_dir``; returns this run's metadata (see the module docstring).

    ``budget_s``: wall seconds (finite, > 0; default 450, 60 when quick or tiny).
    """
    from perfmodel.errors import InputError
    from perfmodel.measuring.preflight import check_budget, require_gpu_stack

    budget_s = check_budget(budget_s, "budget_s")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise InputError(f"unknown stage(s) {', '.join(unknown)} (choose from {', '.join(STAGES)})")
    require_gpu_stack("calibrate bench", NO_GPU_HINT, allow_cpu=allow_cpu)
    import torch

    from perfmodel.calibration.bench_attn import ATTN_COLUMNS, bench_sdpa
    from perfmodel.calibration.bench_gemm import GEMM_COLUMNS, GROUPED_COLUMNS, bench_gemm, bench_grouped
    from perfmodel.calibration.bench_io import Budget, CsvTable, FatalDeviceError, Stage
    from perfmodel.calibration.bench_layers import MODULE_COLUMNS, MOE_COLUMNS, bench_attn_module, bench_moe_block
    from perfmodel.calibration.bench_mem import MEM_COLUMNS, bench_memory
    from perfmodel.calibration.bench_plan import make_plan
    from perfmodel.measuring.env import provenance

    # imported before the clock starts: the first transformers import takes seconds
    import transformers.integrations.sdpa_attention  # noqa: F401
    import transformers.masking_utils  # noqa: F401
    import transformers.models.mixtral.modeling_mixtral  # noqa: F401

    log = log or (lambda msg: print(msg, flush=True))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny CPU ops are dominated by thread-pool overhead otherwise
    mode = mode or ("tiny" if device.type == "cpu" else ("quick" if quick else "full"))
    budget_s = budget_s if budget_s is not None else (QUICK_BUDGET_S if mode != "full" else DEFAULT_BUDGET_S)
    plan = make_plan(mode)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write the tables into {out_dir}: {exc.strerror or exc}") from None
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    budget = Budget(budget_s, {s: plan.shares[s] for s in stages})
    columns = {
        "gemm": GEMM_COLUMNS,
        "grouped": GROUPED_COLUMNS,
        "moe_block": MOE_COLUMNS,
        "attention": ATTN_COLUMNS + MODULE_COLUMNS,
        "memory": MEM_COLUMNS,
    }
    used = [k for k in TABLES if any(STAGE_TABLE[s] == k for s in stages)]
    last_stage = {k: [s for s in stages if STAGE_TABLE[s] == k][-1] for k in used}
    earlier = _earlier_tables(out_dir)
    tables = {k: CsvTable(out_dir / TABLES[k], columns[k]) for k in used}
    meta: dict[str, Any] = {
        "bench_mode": mode,
        "budget_s": budget_s,
        "device": device.type,
        **provenance(),
        "tables": dict(TABLES),
        "stages": {},
        "notes": [
            "times in ms; tflops in TFLOP/s; tbs in TB/s counting minimal bytes",
            "fp8 GEMMs exclude the activation quantisation kernel",
        ],
        "earlier": earlier,
        "kept": {},
    }
    meta_path = out_dir / "metadata.json"
    runners = {
        "memory": lambda st: bench_memory(plan, device, tables["memory"], st, log),
        "gemm": lambda st: bench_gemm(plan, device, tables["gemm"], st, log),
        "grouped": lambda st: bench_grouped(plan, device, tables["grouped"], st, log),
        "attention": lambda st: (bench_sdpa(plan, device, tables["attention"], st, log),
                                 bench_attn_module(plan, device, tables["attention"], st, log)),
        "moe_block": lambda st: bench_moe_block(plan, device, tables["moe_block"], st, log),
        "grouped_fp8": lambda st: bench_grouped(plan, device, tables["grouped"], st, log, fp8=True),
    }
    fatal = None
    failed = {k: False for k in used}
    committed = False
    try:
        for name in stages:
            stage = Stage(budget, name)
            t = time.monotonic()
            log(f"[{budget.elapsed():6.1f} s] stage {name} (until +{stage.deadline - t:.0f} s)")
            error = None
            if fatal is None:
                try:
                    runners[name](stage)
                except FatalDeviceError as exc:
                    fatal = error = f"fatal device error: {exc}"
                except Exception as exc:  # noqa: BLE001 - a broken stage must not lose the others
                    error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                    traceback.print_exc(file=sys.stderr)
                    _free(device)
            else:
                error = "skipped after a fatal device error"
            stage.finish()
            key = STAGE_TABLE[name]
            failed[key] = failed[key] or error is not None
            meta["stages"][name] = {"seconds": round(budget.spent[name], 2), "truncated": budget.truncated[name],
                                    "error": error}
            if name == last_stage[key]:
                table = tables[key]
                if failed[key] and table.path.exists():
                    table.close()
                    meta["kept"][key] = f"a stage failed; this run's rows are in {table.partial_path.name}"
                    log(f"kept the earlier {table.path.name} (a stage failed); new rows in {table.partial_path.name}")
                else:
                    table.commit()
                    earlier.pop(key, None)
                    committed = True
            meta["rows"] = {k: t.rows for k, t in tables.items()}
            meta["elapsed_s"] = round(budget.elapsed(), 2)
            if committed:
                _write_meta(meta_path, meta)
    finally:
        for table in tables.values():
            table.close()
    log(f"bench done in {budget.elapsed():.0f} s: " + ", ".join(f"{k} {t.rows}" for k, t in tables.items()))
    return meta


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize()
        except RuntimeError:
            pass
        torch.cuda.empty_cache()


def _earlier_tables(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Tables already in ``out_dir`` by key, each with the date, commit, mode and GPU of its run."""
    try:
        old = json.loads((out_dir / "metadata.json").read_text())
    except (OSError, ValueError):
        old = {}
    old = old if isinstance(old, dict) else {}
    prior = old.get("earlier") if isinstance(old.get("earlier"), dict) else {}
    own = {k: old.get(k) for k in ("date", "git_commit", "bench_mode", "gpu_name")}
    return {key: prior.get(key) or own for key, name in TABLES.items() if (out_dir / name).exists()}


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perfmodel.calibration.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default calibration/data/<gpu>/)")
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-time budget in seconds")
    parser.add_argument("--mode", choices=("full", "quick", "tiny"), default=None, help="override the mode")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run")
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    from perfmodel.errors import PerfModelError

    try:
        from perfmodel.measuring.preflight import check_budget

        check_budget(args.budget_s)
        run_bench(args.out or default_out_dir(), quick=args.quick, budget_s=args.budget_s, mode=args.mode,
                  stages=stages, allow_cpu=args.allow_cpu)
    except PerfModelError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
