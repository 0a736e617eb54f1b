"""On a GPU machine with vLLM: time vLLM's Triton fused-MoE op at its own tile table and at its
default tile rule, pass by pass, for expert shapes given on the command line.

    python scripts/bench_moe_tiles.py OUT.jsonl 16,6400,4096,2,fp8 8,14336,4096,2,fp8 ... \
        [--tokens 1,16,64,...] [--budget-s 500]

Each shape is E,N,K,TOPK,SCHEME: E experts, N one expert's intermediate width (vLLM's N), K the
hidden size, TOPK experts per token, SCHEME ``none`` (bf16 weights and activations), ``fp8``
(W8A8, per-tensor scales, activations quantized per pass as vLLM does) or ``fp8-block`` (128 x
128 weight blocks, activations per token group). For every pass of M tokens it times
``fused_experts_impl`` (the routed experts' whole op: the activations' quantization, the
expert-alignment kernel, both GEMMs, the activation function, the sum over top-k) twice: with the
tiles vLLM itself picks (its shipped table for this GPU where one exists, the entry nearest M)
and with the tiles of its default rule (``get_default_config``, what it runs where it ships no
table). Routing is uniform: each token's TOPK distinct experts drawn at random; weights and
activations are random normal, never zeros. Each timing replays a CUDA graph of ``--calls``
back-to-back calls (as vLLM's decode steps run), after a warm-up that JIT-compiles the tiles,
and keeps the median over ``--reps`` replays, timed with CUDA events: microseconds per call.

One JSON row per (shape, pass, tiles), appended as it is measured, with the GPU, driver, vLLM,
torch and Triton versions, the date, the tiles' parameters, the table file (if any) and its keys
(the passes it was tuned at, in the file's order, which breaks vLLM's ties between two nearest).
A shape, a pass or a tile choice that fails is written as a row with ``error``; the run goes on.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path

DEFAULT_TOKENS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 640, 768, 896, 1024,
                  1152, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3584, 4096, 6144, 8192,
                  12288, 16384)


def parse_shape(text: str) -> dict:
    experts, width, hidden, top_k, scheme = text.split(",")
    if scheme not in ("none", "fp8", "fp8-block"):
        raise SystemExit(f"scheme {scheme!r}: one of none, fp8, fp8-block")
    return {"experts": int(experts), "width": int(width), "hidden": int(hidden), "top_k": int(top_k),
            "scheme": scheme}


def provenance() -> dict:
    import torch
    import triton
    import vllm

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = None
    return {"gpu_name": torch.cuda.get_device_name(0), "driver": driver, "vllm": vllm.__version__,
            "torch": torch.__version__, "triton": triton.__version__,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": os.environ.get("PERFMODEL_GIT_COMMIT")}


class Shape:
    """The weights, scales and call arguments of one expert shape (random, on the GPU)."""

    def __init__(self, spec: dict):
        import torch

        self.spec = spec
        e, n, k = spec["experts"], spec["width"], spec["hidden"]
        gen = torch.Generator(device="cuda").manual_seed(0)
        w1 = torch.randn(e, 2 * n, k, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.05
        w2 = torch.randn(e, k, n, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.05
        self.kwargs: dict = {}
        self.block_shape = None
        if spec["scheme"] == "none":
            self.w1, self.w2 = w1, w2
            self.dtype_name = None
        else:
            fp8 = torch.float8_e4m3fn
            self.w1, self.w2 = w1.to(fp8), w2.to(fp8)
            self.dtype_name = "fp8_w8a8"
            if spec["scheme"] == "fp8":
                self.kwargs = {"use_fp8_w8a8": True,
                               "w1_scale": torch.full((e,), 0.01, device="cuda", dtype=torch.float32),
                               "w2_scale": torch.full((e,), 0.01, device="cuda", dtype=torch.float32)}
            else:
                self.block_shape = [128, 128]
                self.kwargs = {
                    "use_fp8_w8a8": True, "block_shape": self.block_shape,
                    "w1_scale": torch.full((e, -(-2 * n // 128), -(-k // 128)), 0.01, device="cuda",
                                           dtype=torch.float32),
                    "w2_scale": torch.full((e, -(-k // 128), -(-n // 128)), 0.01, device="cuda",
                                           dtype=torch.float32)}
        del w1, w2

    def table(self) -> tuple[str, dict | None]:
        """vLLM's table file name for this shape on this GPU, and its entries (None: no table)."""
        from vllm.model_executor.layers.fused_moe import fused_moe as fm

        block = self.block_shape or [0, 0]
        name = fm.get_config_file_name(self.spec["experts"], self.spec["width"], self.dtype_name,
                                       self.block_shape)
        return name, fm.get_moe_configs(self.spec["experts"], self.spec["width"], self.dtype_name,
                                        block[0], block[1])

    def default_tiles(self, tokens: int) -> dict:
        from vllm.model_executor.layers.fused_moe import fused_moe as fm

        s = self.spec
        return fm.get_default_config(tokens, s["experts"], s["width"], s["hidden"], s["top_k"],
                                     self.dtype_name, self.block_shape)

    def inputs(self, tokens: int):
        import torch

        s = self.spec
        gen = torch.Generator(device="cuda").manual_seed(tokens)
        hidden = torch.randn(tokens, s["hidden"], device="cuda", dtype=torch.bfloat16, generator=gen)
        scores = torch.rand(tokens, s["experts"], device="cuda", generator=gen)
        ids = scores.topk(s["top_k"], dim=1).indices.to(torch.int32)
        weights = torch.softmax(torch.rand(tokens, s["top_k"], device="cuda", generator=gen), dim=1)
        return hidden, weights.float(), ids

    def call(self, hidden, weights, ids):
        from vllm.model_executor.layers.fused_moe.fused_moe import fused_experts_impl

        return fused_experts_impl(hidden, self.w1, self.w2, weights, ids, **self.kwargs)


def time_call(fn, calls: int, reps: int) -> dict:
    """Median, min and p90 of one call's time, µs, over ``reps`` replays of a graph of ``calls``."""
    import torch

    for _ in range(3):  # JIT-compile the tiles and settle the allocator
        fn()
    torch.cuda.synchronize()
    timing = "cuda_graph"
    try:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        run = graph.replay
    except Exception:  # noqa: BLE001 - some ops cannot be captured; time them eagerly then
        timing = "eager"

        def run():
            for _ in range(calls):
                fn()
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    times.sort()
    return {"us": times[len(times) // 2], "us_min": times[0], "us_p90": times[int(0.9 * (len(times) - 1))],
            "reps": reps, "calls": calls, "timing": timing}


def measure_shape(spec: dict, tokens: list[int], meta: dict, out, args, t0: float) -> None:
    """Write one row per (pass, tiles) of one expert shape to ``out``, while the budget lasts."""
    from vllm.model_executor.layers.fused_moe import override_config

    try:
        shape = Shape(spec)
        table_file, table = shape.table()
    except Exception as exc:  # noqa: BLE001
        out.write(json.dumps({**meta, **spec, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return
    print(f"[{time.monotonic() - t0:.0f} s] {spec} table {table_file if table else None}", flush=True)
    for m in tokens:
        if time.monotonic() - t0 > args.budget_s:
            return
        hidden, weights, ids = shape.inputs(m)
        choices = [("default", shape.default_tiles(m))]
        if table:
            choices.insert(0, ("table", table[min(table, key=lambda key: abs(key - m))]))
        for kind, tiles in choices:
            row = {**meta, **spec, "tokens": m, "tiles": kind, "config": tiles,
                   "table_file": table_file if table else None,
                   "table_keys": list(table) if table else None}
            try:
                with override_config(None if kind == "table" else tiles):
                    row.update(time_call(lambda: shape.call(hidden, weights, ids), args.calls, args.reps))
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"  M={m} {kind}: {row.get('us', row.get('error'))}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("shapes", nargs="+", type=parse_shape)
    parser.add_argument("--tokens", default=",".join(map(str, DEFAULT_TOKENS)))
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--budget-s", type=float, default=500.0)
    args = parser.parse_args()
    t0 = time.monotonic()

    import torch

    tokens = [int(t) for t in args.tokens.split(",")]
    meta = provenance()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for spec in args.shapes:
            if time.monotonic() - t0 > args.budget_s:
                print(f"budget spent: skip {spec}", flush=True)
                continue
            measure_shape(spec, tokens, meta, out, args, t0)
            torch.cuda.empty_cache()
    print(f"done in {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
