"""Data parallelism for the ``vllm`` backend: ``dp`` engine processes, each on its own GPUs.

vLLM's offline ``LLM`` refuses ``data_parallel_size > 1`` in one process; its data parallelism
is one engine process per rank. ``measure --backend vllm --dp N`` does that here: N rank
processes (spawned, not forked: each starts its own CUDA context), rank r on GPUs
r·w … r·w + w − 1 of the visible ones (w = tp·pp), each building the same engine for B/N
sequences of every point (N must divide B). A point is started on all ranks at once; each
times its share as the single-engine backend does
(:class:`perfmodel.measuring.vllm_backend.VLLMBackend`), and the point's times are the slowest
rank's (a data-parallel deployment answers the batch when its last rank does): TTFT, decode
step, decode total and E2E are maxima over the ranks, throughput is the whole batch's
B·(S+O)/E2E. The row keeps each rank's own times and GPUs (``replicas``).

Two modes (``--dp-mode``, :data:`DP_MODES`):

- ``replicas`` (the default): the ranks share nothing, each an engine of its own seeing only
  its GPUs (``CUDA_VISIBLE_DEVICES``); expert parallelism stays within a rank's tp GPUs. This
  is N copies of a deployment behind a load balancer.
- ``vllm``: vLLM's own data parallelism, what ``--data-parallel-size`` serves, for models with
  experts: every rank sees all N·w GPUs and is told its place through vLLM's offline
  data-parallel environment (``VLLM_DP_SIZE``, ``VLLM_DP_RANK``, ``VLLM_DP_RANK_LOCAL``,
  ``VLLM_DP_MASTER_IP`` / ``_PORT``: :func:`coordinated_env`), so each MoE layer spans the
  ranks (their tokens gathered, an idle rank stepping with a dummy batch) and
  ``--expert-parallel`` spreads whole experts over all tp·N GPUs (DP+EP). The ranks then step
  together: a rank that fails a point leaves the others waiting in a collective, so such a
  sweep needs the time limit around it (the device scripts' ``timeout``).
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from typing import Any

from perfmodel.measuring.points import SweepPoint

#: Seconds a replica is given to leave after being asked to stop, before it is terminated.
STOP_GRACE_S = 60.0

#: Per-replica fields the row keeps (``replicas``).
REPLICA_FIELDS = ("ttft_ms", "itl_ms", "e2e_ms", "engine_itl_ms")

#: ``--dp-mode``: independent engines, or vLLM's data parallelism (see the module docstring).
DP_MODES = ("replicas", "vllm")

#: Where the ranks of vLLM's data parallelism meet (one machine).
DP_MASTER_IP = "127.0.0.1"


class ReplicaError(RuntimeError):
    """A replica failed a point, or died."""


def replica_point(point: SweepPoint, dp: int) -> SweepPoint:
    """What one of ``dp`` ranks measures of ``point``: B/dp sequences, no ``dp`` or ``dp_mode``
    setting (a rank builds one engine; vLLM's data parallelism reaches it through its
    environment)."""
    if point.batch % dp:
        raise ValueError(f"dp={dp} does not divide B={point.batch}")
    settings = tuple((k, v) for k, v in point.settings if k not in ("dp", "dp_mode"))
    return replace(point, batch=point.batch // dp, settings=settings)


def device_slices(dp: int, per_replica: int, visible: list[str]) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each replica: consecutive groups of ``per_replica`` of the
    ``visible`` devices (their ids as this process sees them)."""
    if dp * per_replica > len(visible):
        raise ValueError(f"{dp} replicas of {per_replica} GPU(s) need {dp * per_replica} GPUs, "
                         f"{len(visible)} visible")
    return [",".join(visible[r * per_replica:(r + 1) * per_replica]) for r in range(dp)]


def visible_devices(count: int) -> list[str]:
    """The device ids this process sees: ``$CUDA_VISIBLE_DEVICES``'s entries, else 0 … count − 1."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        return [d.strip() for d in env.split(",") if d.strip()]
    return [str(i) for i in range(count)]


def merge_replicas(point: SweepPoint, parts: list[dict[str, Any]], devices: list[str],
                   mode: str = "replicas") -> dict[str, Any]:
    """One row's fields from the ranks' fields of the same point (see the module docstring);
    ``devices``: the GPUs each rank ran on, ``mode`` the data-parallel mode."""
    def slowest(name: str) -> float | None:
        values = [p[name] for p in parts if p.get(name) is not None]
        return max(values) if values else None

    e2e = slowest("e2e_ms")
    o = point.output_len
    fields = dict(parts[0])
    fields.update({
        "ttft_ms": slowest("ttft_ms"), "itl_ms": slowest("itl_ms"), "e2e_ms": e2e,
        "decode_total_ms": slowest("decode_total_ms"),
        "engine_itl_ms": slowest("engine_itl_ms"), "engine_ttft_ms": slowest("engine_ttft_ms"),
        "throughput_tok_s": point.batch * (point.input_len + o) / (e2e / 1e3),
        "output_tok_s": point.batch * o / (e2e / 1e3),
        "notes": sorted({n for p in parts for n in p.get("notes") or []}),
        "replicas": [{"devices": d, "batch": point.batch // len(parts),
                      **{k: p.get(k) for k in REPLICA_FIELDS}} for p, d in zip(parts, devices)],
    })
    detail = dict(fields.get("engine_detail") or {})
    detail["data_parallel_replicas"] = len(parts)
    detail["data_parallel_mode"] = mode
    fields["engine_detail"] = detail
    return fields


def replica_env(replica: int, devices: str) -> dict[str, str]:
    """Environment of one replica: its GPUs, and a vLLM cache folder of its own (replicas of one
    engine compile the same graphs at the same time; vLLM separates its ranks' caches, not
    independent engines')."""
    root = os.environ.get("VLLM_CACHE_ROOT") or os.path.join(os.path.expanduser("~"), ".cache", "vllm")
    return {"CUDA_VISIBLE_DEVICES": devices, "VLLM_CACHE_ROOT": os.path.join(root, f"replica-{replica}")}


def coordinated_env(rank: int, dp: int, devices: list[str], master_port: int) -> dict[str, str]:
    """Environment of rank ``rank`` of vLLM's data parallelism over ``dp`` ranks: every one of
    the ``devices`` visible (vLLM places rank r on its r-th group of tp·pp), its place among the
    ranks, where they meet, and a vLLM cache folder of its own (:func:`replica_env`)."""
    env = replica_env(rank, ",".join(devices))
    env.update({"VLLM_DP_SIZE": str(dp), "VLLM_DP_RANK": str(rank), "VLLM_DP_RANK_LOCAL": str(rank),
                "VLLM_DP_MASTER_IP": DP_MASTER_IP, "VLLM_DP_MASTER_PORT": str(master_port)})
    return env


def free_port() -> int:
    """A TCP port nothing listens on now (the ranks' meeting point)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((DP_MASTER_IP, 0))
        return int(sock.getsockname()[1])


def _replica_main(conn, env: dict[str, str], backend_cls, backend_kwargs: dict[str, Any]) -> None:
    """A rank process: its environment first (``env``: its GPUs, and its place among vLLM's
    data-parallel ranks where it has one), then prepare / measure / stop on request."""
    os.environ.update(env)
    backend = backend_cls(**backend_kwargs)
    handle = None
    try:
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                break
            if kind == "stop":
                break
            try:
                if kind == "prepare":
                    handle = backend.prepare(payload)
                    reply = ("ok", None)
                else:
                    reply = ("ok", backend.measure(handle, payload))
            except Exception as exc:  # noqa: BLE001 - sent to the parent as one line
                from perfmodel.measuring.runner import one_line

                reply = ("error", one_line(exc))
                backend.recover()
            conn.send(reply)
    finally:
        if handle is not None:
            backend.release(handle)
        conn.close()


class DataParallelBackend:
    """``dp`` rank processes of ``replica_cls`` (default the vllm backend), one point at a time
    on all of them; ``mode`` one of :data:`DP_MODES` (see the module docstring)."""

    name = "vllm"

    def __init__(self, dp: int, per_replica_gpus: int, visible: list[str], replica_cls=None,
                 replica_kwargs: dict[str, Any] | None = None, log=None, mode: str = "replicas") -> None:
        if mode not in DP_MODES:
            raise ValueError(f"unknown data-parallel mode '{mode}' (one of: {', '.join(DP_MODES)})")
        self.mode = mode
        if replica_cls is None:
            from perfmodel.measuring.vllm_backend import VLLMBackend

            replica_cls = VLLMBackend
        self.dp = dp
        self.devices = device_slices(dp, per_replica_gpus, visible)
        self.visible = visible[:dp * per_replica_gpus]
        self.replica_cls = replica_cls
        self.replica_kwargs = dict(replica_kwargs or {})
        self.local = replica_cls(**self.replica_kwargs)  # describes rows; builds nothing
        self.log = log or (lambda msg: print(msg, flush=True))

    def provenance(self) -> dict[str, Any]:
        return self.local.provenance()

    def describe(self, point: SweepPoint) -> dict[str, Any]:
        return self.local.describe(point)

    def estimate_s(self, handle, point: SweepPoint) -> float:
        """Expected time of the point, s: one replica's, at B/dp (the replicas run in parallel)."""
        return self.local.estimate_s(None, replica_point(point, self.dp))

    def _ask(self, replicas, kind: str, payload) -> list[Any]:
        """Send one request to every replica, then collect every reply (they work meanwhile)."""
        sent = []
        for _, conn in replicas:
            try:
                conn.send((kind, payload))
                sent.append(True)
            except OSError:  # a replica that has exited
                sent.append(False)
        replies, failures = [], []
        for r, (proc, conn) in enumerate(replicas):
            try:
                if not sent[r]:
                    raise EOFError
                status, value = conn.recv()
            except (EOFError, OSError):
                proc.join(5)
                status, value = "died", f"exited with code {proc.exitcode}"
            if status != "ok":
                failures.append(f"replica {r} (GPUs {self.devices[r]}): {value}")
            replies.append(value)
        if failures:
            raise ReplicaError("; ".join(failures))
        return replies

    def rank_envs(self) -> list[dict[str, str]]:
        """Each rank's environment: its own GPUs (``replicas``), or all of them and its place in
        vLLM's data parallelism (``vllm``, ranks meeting on a port free now)."""
        if self.mode == "vllm":
            port = free_port()
            return [coordinated_env(r, self.dp, self.visible, port) for r in range(self.dp)]
        return [replica_env(r, devices) for r, devices in enumerate(self.devices)]

    def prepare(self, points: list[SweepPoint]):
        ctx = multiprocessing.get_context("spawn")
        replicas = []
        for r, env in enumerate(self.rank_envs()):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_replica_main, name=f"perfmodel-replica-{r}",
                               args=(child, env, self.replica_cls, self.replica_kwargs))
            proc.start()
            child.close()
            replicas.append((proc, parent))
        self.log(f"data parallel ({self.mode}): {self.dp} ranks on GPUs {' | '.join(self.devices)}")
        handle = {"replicas": replicas}
        try:
            self._ask(replicas, "prepare", [replica_point(p, self.dp) for p in points])
        except BaseException:
            self.release(handle)
            raise
        return handle

    def measure(self, handle, point: SweepPoint) -> dict[str, Any]:
        parts = self._ask(handle["replicas"], "measure", replica_point(point, self.dp))
        return merge_replicas(point, parts, self.devices, self.mode)

    def release(self, handle) -> None:
        if not handle:
            return
        replicas = handle.pop("replicas", [])
        for proc, conn in replicas:
            try:
                conn.send(("stop", None))
            except (BrokenPipeError, OSError):
                pass
        for proc, conn in replicas:
            proc.join(STOP_GRACE_S)
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
            conn.close()

    def recover(self) -> None:
        """Nothing to free here: the GPUs belong to the replica processes."""

    def is_oom(self, exc: BaseException) -> bool:
        return self.local.is_oom(exc)

    def is_fatal(self, exc: BaseException) -> bool:
        """A dead replica, or a replica's fatal device error, ends the sweep (a new process resumes)."""
        text = str(exc)
        return "exited with code" in text or self.local.is_fatal(exc)
