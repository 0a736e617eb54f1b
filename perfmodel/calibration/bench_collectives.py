"""Collectives between the GPUs of one host, timed through ``torch.distributed``.

``run_collectives(out_dir, world_size=None, max_bytes=1 GiB)`` starts one process per GPU
(``torch.multiprocessing.spawn``; the world size is the number of visible GPUs unless given),
NCCL on GPUs, and times all-reduce, all-gather, reduce-scatter, all-to-all and send/recv (each
rank sends to the next and receives from the previous one) of bf16 messages of 4 KiB, 8 KiB, …
up to ``max_bytes``. It writes into ``out_dir`` (default ``calibration/data/<gpu>-x<N>/``):

- ``collectives.csv`` - one row per collective and size: ``collective``, ``world_size``,
  ``bytes`` (the nccl-tests size: see :mod:`perfmodel.calibration.fit_collectives`),
  ``time_s`` (median), ``p10_s``, ``p90_s`` (seconds per call), ``reps`` (timed samples),
  ``algbw_gb_s`` = bytes / time and ``busbw_gb_s`` = algbw · nccl-tests' bus factor (10^9 B/s),
  ``dtype``, ``backend``, timing ``method`` and ``inner`` (calls per sample), ``status``
  (ok / oom / error) and ``error``;
- ``metadata.json`` - the environment (:func:`perfmodel.measuring.env.provenance`), the backend
  and NCCL version, the NCCL/PyTorch environment variables set, the sizes, timing and budget.

Timing: every rank warms the collective up, then times samples of ``inner`` back-to-back calls
(CUDA events on GPU, :func:`~perfmodel.measuring.timing.time_events`; wall clock on CPU). The
ranks agree on ``inner`` and the number of samples from the slowest rank's first estimate; the
row reports the rank with the slowest median. NVLink multicast (NVLS) stays off: the variables of
:data:`SAFE_ENV` are set before the process group starts, in every rank, and recorded.

The table is written as :class:`~perfmodel.calibration.bench_io.CsvTable` writes (rows to
``collectives.csv.partial``, moved into place at the end): a killed run leaves an earlier table
as it was. A size that cannot be allocated on some rank is an ``oom`` row; the run goes on.

It needs at least 2 CUDA GPUs and refuses (InputError) otherwise; the CPU mode (gloo, for
tests) needs ``allow_cpu=True`` (``--allow-cpu``, or ``PERFMODEL_ALLOW_CPU=1``) and a world size
of at least 2 (default 2).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from perfmodel.errors import InputError, PerfModelError

MIN_BYTES = 4 * 2**10
MAX_BYTES = 2**30
#: Environment every rank runs under: NVLink multicast off in NCCL, PyTorch symmetric memory
#: and NVSHMEM (on a shared host, a program using it can put the GPUs out of service).
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
DEFAULT_BUDGET_S = 300.0
TABLE = "collectives.csv"
COLUMNS = ["collective", "world_size", "bytes", "time_s", "p10_s", "p90_s", "reps", "algbw_gb_s",
           "busbw_gb_s", "dtype", "backend", "method", "inner", "status", "error"]
#: Calls before timing (NCCL sets up its connections on the first ones).
WARMUP = 5
#: GPU time of one timed sample (ms) and of all samples of one case (ms).
SAMPLE_MS = 1.0
TARGET_MS = 40.0
MAX_INNER = 100
#: What works without GPUs, said when the bench refuses to run.
NO_GPUS_HINT = "the collectives fit reads a committed collectives.csv"

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30}


def parse_bytes(text: str | int, option: str = "--max-bytes") -> int:
    """A message size in bytes from ``4096``, ``64KiB``, ``16M``, ``1GiB`` (K, M, G are binary),
    between 4 KiB and 1 GiB; else InputError."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InputError(f"{option} must be a size in bytes such as 4096, 64KiB or 1GiB, got {text!r}")
    value = float(match.group(1)) * _UNITS[unit]
    if not MIN_BYTES <= value <= MAX_BYTES:
        raise InputError(f"{option} must be between 4KiB and 1GiB, got {text}")
    return int(value)


def message_sizes(max_bytes: int = MAX_BYTES) -> list[int]:
    """Powers of 2 from 4 KiB up to ``max_bytes`` (bytes)."""
    sizes, size = [], MIN_BYTES
    while size <= max_bytes:
        sizes.append(size)
        size *= 2
    return sizes


def gpu_spec_name() -> str | None:
    """The spec (``specs/hardware/``) of this machine's GPU (``NVIDIA H200`` -> ``h200-sxm``), or None."""
    from perfmodel.errors import SpecError
    from perfmodel.measuring.env import gpu_short_name
    from perfmodel.specs.hardware import load_gpu

    try:
        return load_gpu(gpu_short_name()).name
    except SpecError:
        return None


def gpu_folder_name() -> str:
    """The GPU's spec name when one matches, else its short name (``cpu`` without a GPU)."""
    from perfmodel.measuring.env import gpu_short_name

    return gpu_spec_name() or gpu_short_name()


def default_out_dir(world_size: int) -> Path:
    from perfmodel.paths import CALIBRATION_DATA_DIR

    return CALIBRATION_DATA_DIR / f"{gpu_folder_name()}-x{world_size}"


def resolve_world(world_size: int | None, allow_cpu: bool = False) -> tuple[int, str]:
    """(world size, backend) of a run here, or InputError (one line): fewer than 2 GPUs, a world
    size under 2 or over the GPUs visible; without a GPU, unless allowed (then gloo, default 2)."""
    from perfmodel.measuring.preflight import require_gpu

    command = "calibrate collectives"
    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int)):
        raise InputError(f"--world-size must be a whole number, got {world_size!r}")
    require_gpu(command, NO_GPUS_HINT, allow_cpu=allow_cpu)
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count < 2:
            raise InputError(f"{command} needs at least 2 GPUs, {count} visible ({NO_GPUS_HINT})")
        world = count if world_size is None else world_size
        if not 2 <= world <= count:
            raise InputError(f"--world-size must be between 2 and the {count} GPUs visible, got {world}")
        return world, "nccl"
    world = 2 if world_size is None else world_size
    if world < 2:
        raise InputError(f"--world-size must be at least 2 (one process per rank), got {world}")
    return world, "gloo"


def run_collectives(
    out_dir: Path | str | None = None,
    world_size: int | None = None,
    max_bytes: int | str = MAX_BYTES,
    budget_s: float | None = None,
    collectives: tuple[str, ...] | None = None,
    allow_cpu: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Time the collectives into ``out_dir``; returns the run's metadata (module docstring) and
    ``out_dir``.

    ``max_bytes``: largest message (bytes, or a size such as ``"256MiB"``); ``budget_s``: wall
    seconds after which no new size starts (default 300).
    """
    import json

    from perfmodel.calibration.fit_collectives import COLLECTIVES, bus_factor
    from perfmodel.measuring.preflight import check_budget

    max_bytes = parse_bytes(max_bytes, "max_bytes")
    budget_s = check_budget(budget_s, "budget_s")
    collectives = tuple(collectives or COLLECTIVES)
    unknown = [c for c in collectives if c not in COLLECTIVES]
    if unknown:
        raise InputError(f"unknown collective(s) {', '.join(unknown)} (choose from {', '.join(COLLECTIVES)})")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(f"--out {out_dir} is a file; the collectives bench writes its table into a folder")
    world, backend = resolve_world(world_size, allow_cpu)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(world)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write the table into {out_dir}: {exc.strerror or exc}") from None
    import torch.multiprocessing as mp

    saved = {k: os.environ.get(k) for k in SAFE_ENV}
    os.environ.update(SAFE_ENV)  # before any rank starts; each rank sets them again
    rendezvous = Path(tempfile.mkdtemp(prefix="perfmodel-collectives-"))
    config = {
        "world": world, "backend": backend, "out_dir": str(out_dir), "sizes": message_sizes(max_bytes),
        "collectives": collectives, "factors": {c: float(bus_factor(c, world)) for c in collectives},
        "budget_s": budget_s if budget_s is not None else DEFAULT_BUDGET_S,
        "init_method": f"file://{rendezvous / 'store'}", "verbose": verbose,
    }
    try:
        mp.spawn(_worker, args=(config,), nprocs=world, join=True)
    except mp.ProcessRaisedException as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        partial = out_dir / (TABLE + ".partial")
        kept = f"; rows measured so far are in {partial}" if partial.is_file() else ""
        raise PerfModelError(f"a collectives rank failed: {lines[-1].strip() if lines else exc}{kept}") from None
    except mp.ProcessExitedException as exc:
        raise PerfModelError(f"a collectives rank exited: {exc}") from None
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {**json.loads((out_dir / "metadata.json").read_text()), "out_dir": str(out_dir)}


def _buffers(collective: str, nbytes: int, world: int, device) -> tuple[int, Callable[[], object]]:
    """(bytes moved per the nccl-tests size, one call of ``collective``) on bf16 buffers."""
    import torch
    import torch.distributed as dist

    count = nbytes // 2 // world * world  # elements; divisible by the world size
    size = torch.bfloat16.itemsize * count
    rank = dist.get_rank()

    def zeros(n: int):
        return torch.zeros(n, dtype=torch.bfloat16, device=device)

    if collective == "all_reduce":
        x = zeros(count)
        return size, lambda: dist.all_reduce(x)
    if collective == "all_gather":
        shard, full = zeros(count // world), zeros(count)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return size, lambda: gather(full, shard)
    if collective == "reduce_scatter":
        full, shard = zeros(count), zeros(count // world)
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        return size, lambda: scatter(shard, full)
    if collective == "all_to_all":
        src, dst = zeros(count), zeros(count)
        return size, lambda: dist.all_to_all_single(dst, src)
    if collective == "send_recv":
        send, recv = zeros(count), zeros(count)

        def send_recv() -> None:
            ops = [dist.P2POp(dist.isend, send, (rank + 1) % world), dist.P2POp(dist.irecv, recv, (rank - 1) % world)]
            for work in dist.batch_isend_irecv(ops):
                work.wait()

        return size, send_recv
    raise InputError(f"unknown collective '{collective}'")


def _worker(rank: int, config: dict[str, Any]) -> None:
    """One rank: join the group, time every (size, collective); rank 0 writes the table."""
    os.environ.update(SAFE_ENV)
    import torch
    import torch.distributed as dist

    world, backend = config["world"], config["backend"]
    gpu = backend == "nccl"
    if gpu:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    kwargs = {"device_id": device} if gpu else {}
    dist.init_process_group(backend, init_method=config["init_method"], rank=rank, world_size=world,
                            timeout=_dt.timedelta(minutes=5), **kwargs)
    try:
        _measure(rank, config, device)
    finally:
        dist.destroy_process_group()


def _measure(rank: int, config: dict[str, Any], device) -> None:
    import torch
    import torch.distributed as dist

    from perfmodel.calibration.bench_io import CsvTable, error_fields

    world, backend, gpu = config["world"], config["backend"], device.type == "cuda"
    t0 = time.monotonic()
    table = CsvTable(Path(config["out_dir"]) / TABLE, COLUMNS, common=[]) if rank == 0 else None
    truncated, done = False, 0
    try:
        for nbytes in config["sizes"]:
            for name in config["collectives"]:
                go = rank != 0 or done == 0 or time.monotonic() - t0 < config["budget_s"]
                call, error = None, None
                try:
                    size, call = _buffers(name, nbytes, world, device)
                except Exception as exc:  # noqa: BLE001 - an allocation failure is a row
                    size, error = nbytes // 2 // world * world * 2, exc
                flags = torch.tensor([call is not None, go], dtype=torch.int32, device=device)
                dist.all_reduce(flags, op=dist.ReduceOp.MIN)
                if not flags[1].item():
                    truncated = True
                    break
                row = {"collective": name, "world_size": world, "bytes": size, "dtype": "bf16", "backend": backend}
                if not flags[0].item():
                    fields = error_fields(error) if error is not None else {
                        "status": "oom", "error": "could not allocate the buffers on another rank"}
                    call = error = None
                    _free(gpu)
                else:
                    stats = _time(call, gpu, device)
                    del call
                    sec = stats["time_s"]
                    algbw = size / sec / 1e9
                    fields = {**stats, "algbw_gb_s": algbw, "busbw_gb_s": algbw * config["factors"][name],
                              "status": "ok", "error": ""}
                done += 1
                if table is not None:
                    table.add({**row, **fields})
                    if config["verbose"]:
                        _log(row, fields)
            if truncated:
                break
        if table is not None:
            table.commit()
            _write_metadata(config, truncated, time.monotonic() - t0, table.rows)
    finally:
        if table is not None:
            table.close()


def _time(call: Callable[[], object], gpu: bool, device) -> dict[str, Any]:
    """Per-call time of ``call`` on every rank (same samples everywhere), the slowest rank's."""
    import torch
    import torch.distributed as dist

    from perfmodel.measuring.timing import plan_reps, time_events, time_wall

    def sample(inner: int, reps: int, warmup: int):
        def fn(_i: int) -> None:
            for _ in range(inner):
                call()

        if gpu:
            return time_events(fn, reps=reps, warmup=warmup)
        return time_wall(fn, reps=reps, device=device, warmup=warmup)

    first = sample(1, 3, WARMUP)
    est = torch.tensor([first.median_ms], dtype=torch.float64, device=device)
    dist.all_reduce(est, op=dist.ReduceOp.MAX)
    est_ms = max(float(est.item()), 1e-4)
    inner = int(min(MAX_INNER, max(1, round(SAMPLE_MS / est_ms))))
    reps = plan_reps(est_ms * inner, TARGET_MS, min_reps=5, max_reps=30)
    dist.barrier()
    stats = sample(inner, reps, 1)
    mine = torch.tensor([stats.median_ms, stats.p10_ms, stats.p90_ms], dtype=torch.float64, device=device)
    every = torch.zeros(dist.get_world_size() * 3, dtype=torch.float64, device=device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(every, mine)
    median, p10, p90 = every.view(-1, 3)[int(every.view(-1, 3)[:, 0].argmax())].tolist()
    return {"time_s": median / inner / 1e3, "p10_s": p10 / inner / 1e3, "p90_s": p90 / inner / 1e3,
            "reps": stats.n_reps, "method": stats.method, "inner": inner}


def _free(gpu: bool) -> None:
    import gc

    import torch

    gc.collect()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _log(row: dict[str, Any], fields: dict[str, Any]) -> None:
    if fields["status"] != "ok":
        print(f"{row['collective']:15s} {row['bytes']:>11d} B  {fields['status']}: {fields['error']}", flush=True)
        return
    print(f"{row['collective']:15s} {row['bytes']:>11d} B  {fields['time_s'] * 1e6:10.1f} us  "
          f"algbw {fields['algbw_gb_s']:8.2f}  busbw {fields['busbw_gb_s']:8.2f} GB/s", flush=True)


def _write_metadata(config: dict[str, Any], truncated: bool, elapsed_s: float, rows: int) -> None:
    import torch

    from perfmodel.calibration.bench import _write_meta
    from perfmodel.measuring.env import provenance

    nccl = None
    if config["backend"] == "nccl":
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:  # noqa: BLE001 - a torch without NCCL
            nccl = None
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("NCCL_", "NVSHMEM_", "TORCH_SYMM_MEM_"))}
    meta = {
        "bench": "collectives",
        "backend": config["backend"],
        "world_size": config["world"],
        "device": "cuda" if config["backend"] == "nccl" else "cpu",
        **provenance(),
        "gpu_spec": gpu_spec_name() if config["backend"] == "nccl" else None,
        "nccl_version": nccl,
        "env": env,
        "dtype": "bf16",
        "collectives": list(config["collectives"]),
        "sizes_bytes": list(config["sizes"]),
        "timing": {"warmup_calls": WARMUP, "sample_ms": SAMPLE_MS, "target_ms": TARGET_MS, "max_inner": MAX_INNER,
                   "method": "cuda_events" if config["backend"] == "nccl" else "wall"},
        "budget_s": config["budget_s"],
        "truncated": truncated,
        "elapsed_s": round(elapsed_s, 2),
        "rows": rows,
        "tables": {"collectives": TABLE},
        "notes": [
            "time_s, p10_s, p90_s: seconds per call, of the rank with the slowest median",
            "bytes: the nccl-tests size (all_gather: gathered output; reduce_scatter: scattered input; "
            "all_to_all and send_recv: one rank's send buffer)",
            "algbw_gb_s = bytes / time_s; busbw_gb_s = algbw_gb_s * bus factor "
            "(all_reduce 2(n-1)/n; all_gather, reduce_scatter, all_to_all (n-1)/n; send_recv 1), 10^9 B/s",
            "send_recv: every rank sends to rank+1 and receives from rank-1 at once",
        ],
    }
    _write_meta(Path(config["out_dir"]) / "metadata.json", meta)
