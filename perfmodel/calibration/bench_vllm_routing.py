"""The routing kernels of vLLM's staged MXFP4 MoE, timed alone on the device (needs vLLM).

vLLM 0.26 runs gpt-oss's MXFP4 experts with ``--moe-backend triton_unfused`` as its
``UnfusedOAITritonExperts``: the router's top-k ids become triton_kernels' routing data
(``make_routing_data``) before the ``matmul_ogs`` GEMMs. Its first kernel, ``pack_bitmatrix``,
sets one bit per (token, chosen expert) in a T × ⌈E/32⌉ matrix of 32-bit words: one program per
512 tokens, each walking the ⌈E/32⌉ columns one after another, so its time follows the experts,
not the tokens, until T passes 512 · SMs.

Timed here, each CUDA-graph captured (:data:`INNER` calls per replay, :data:`REPS` replays, CUDA
events around each; ms per call, the gap between graph-replayed kernels included), over experts
E × tokens T at top-k :data:`TOP_K`, each token's k experts distinct and drawn at random:

- ``pack_bitmatrix``: the kernel alone, on the buffers ``make_routing_data`` gives it;
- ``make_routing_data``: the whole routing-data step (the casts, the pack, the mask's metadata,
  the gate gather).

    source scripts/vllm_setup.sh && python -m perfmodel.calibration.bench_vllm_routing --out FILE.csv

Rows: one per (kernel, E, T), with the GPU, the versions and the commit (``perfmodel.measuring.env``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

#: Routed experts per layer timed (gpt-oss-20b has 32, gpt-oss-120b 128).
EXPERTS = (8, 16, 32, 48, 64, 96, 128, 160, 192, 256, 384, 512)
#: Tokens per pass timed (decode batches, and prefills past one program of 512 rows).
TOKENS = (1, 16, 64, 256, 512, 2048, 16384)
#: Experts per token (gpt-oss's).
TOP_K = 4
#: Calls per captured graph, and replays timed.
INNER, REPS = 16, 20
#: Columns of the rows file.
COLUMNS = ("kernel", "experts", "tokens", "top_k", "median_ms", "p10_ms", "p90_ms", "inner", "reps",
           "gpu_name", "driver", "torch", "triton", "vllm", "git_commit", "date")


def random_topk(tokens: int, experts: int, k: int):
    """(ids, weights) of ``tokens`` tokens each routed to ``k`` distinct random experts."""
    import torch

    ids = torch.rand(tokens, experts, device="cuda").argsort(dim=1)[:, :k].to(torch.int32)
    weights = torch.softmax(torch.randn(tokens, k, device="cuda"), dim=1)
    return ids, weights


def time_case(kernel: str, experts: int, tokens: int, k: int) -> dict[str, Any]:
    """One row: ``kernel`` (``pack_bitmatrix`` or ``make_routing_data``) at E experts, T tokens."""
    import torch
    from triton import cdiv
    from vllm.model_executor.layers.fused_moe.experts import gpt_oss_triton_kernels_moe as staged

    from perfmodel.measuring.timing import time_graph

    ids, weights = random_topk(tokens, experts, k)
    if kernel == "make_routing_data":
        def call(_i: int) -> None:
            staged.make_routing_data(ids, weights, experts)
    else:  # the launch make_routing_data makes, on its own buffers
        ids16 = ids.to(torch.int16)
        block_m, block_k = 512, 32
        cols = cdiv(experts, block_k)
        bitmatrix = torch.zeros((tokens, cols), dtype=torch.uint32, device="cuda")

        def call(_i: int) -> None:
            staged.pack_bitmatrix[(cdiv(tokens, block_m),)](
                bitmatrix, ids16, tokens, cols, k, BLOCK_SIZE_M=block_m, BLOCK_SIZE_K=block_k)
    stats = time_graph(call, INNER, REPS)
    return {"kernel": kernel, "experts": experts, "tokens": tokens, "top_k": k, "median_ms": stats.median_ms,
            "p10_ms": stats.p10_ms, "p90_ms": stats.p90_ms, "inner": INNER, "reps": REPS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="CSV file of the rows (appended to)")
    args = parser.parse_args(argv)
    import torch

    from perfmodel.measuring.env import provenance

    if not torch.cuda.is_available():
        print("bench_vllm_routing: no CUDA GPU here", file=sys.stderr)
        return 2
    env = provenance()
    new = not args.out.exists()
    with args.out.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for kernel in ("pack_bitmatrix", "make_routing_data"):
            for experts in EXPERTS:
                for tokens in TOKENS:
                    try:
                        row = {**env, **time_case(kernel, experts, tokens, TOP_K)}
                    except Exception as exc:  # noqa: BLE001 - one case's failure is its line, the rest run
                        print(f"{kernel} E={experts} T={tokens}: failed: {type(exc).__name__}: {exc}", flush=True)
                        continue
                    writer.writerow(row)
                    fh.flush()
                    print(f"{kernel} E={experts} T={tokens}: {row['median_ms'] * 1e3:.1f} us", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
