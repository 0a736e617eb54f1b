"""What bursty arrivals change, measured against what a plan would have said before the runs.

    python scripts/bursty_change.py [validate/results/h200-vllm-serving-bursty.jsonl] [--gpu h200-sxm]

For each pair of serving rows of one model, rate and engine that differ only in the gamma shape
of their arrival gaps (``burstiness``: one bursty, one Poisson), prints the measured change of
TTFT and ITL p50/p90 (bursty over Poisson, %) beside the change the model gives when it draws the
arrivals itself (:func:`perfmodel.planning.predict_serving` at the row's nominal rate and shape,
its N requests from an idle engine, with the row's weights, KV cache's type and CUDA graphs, at the row's
host speed, the mean over ``--seeds`` seeds).
No measured submission time enters the model's side: that is what a plan says. The replay of each
run's own schedule is the serving validation's (``perfmodel validate all --serving``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from perfmodel.host_speed import row_host_ms
from perfmodel.measuring.compare import row_graph_tokens, row_overrides
from perfmodel.measuring.serving_replay import row_burstiness, serving_kv_dtype, serving_weights
from perfmodel.planning import predict_serving

METRICS = ("ttft_p50", "ttft_p90", "itl_p50", "itl_p90")


def drawn(row: dict, gpu: str, seeds: int) -> dict[str, float]:
    """The model's own draws at a row's rate and shape: each metric's mean over the seeds, ms."""
    engine = row.get("engine") or {}
    runs = [predict_serving(row["model"], gpu, (1, 1, 1),
                            {"rate": row["rate"], "burstiness": row_burstiness(row),
                             "input_len": row["input_len"], "output_len": row["output_len"]},
                            dtype=serving_weights(row), kv_dtype=serving_kv_dtype(row),
                            overrides=row_overrides(row),
                            graph_tokens=row_graph_tokens(row), max_num_seqs=int(row["max_num_seqs"]),
                            max_batched_tokens=engine.get("max_num_batched_tokens", 8192),
                            requests=int(row["num_requests"]), warmup=0, seed=seed,
                            host_probe_ms=row_host_ms(row))
            for seed in range(seeds)]
    return {m: 1e3 * float(np.mean([r[f"{m.split('_')[0]}_s"][m.split("_")[1]] for r in runs])) for m in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", default="validate/results/h200-vllm-serving-bursty.jsonl")
    parser.add_argument("--gpu", default="h200-sxm")
    parser.add_argument("--seeds", type=int, default=6)
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("status") == "ok"]

    def key(r: dict) -> tuple:
        return (r["model"], r["rate"], r["input_len"], r["output_len"], r["num_requests"], r["max_num_seqs"],
                json.dumps(r.get("engine"), sort_keys=True))

    poisson = {key(r): r for r in rows if row_burstiness(r) == 1.0}
    print("| model | rate | k | metric | measured, k / Poisson (ms) | change | model's own draws, change |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        base = poisson.get(key(row))
        if row_burstiness(row) == 1.0 or base is None:
            continue
        ours, theirs = drawn(row, args.gpu, args.seeds), drawn(base, args.gpu, args.seeds)
        for m in METRICS:
            measured = row[f"{m}_ms"] / base[f"{m}_ms"] - 1
            print(f"| {row['model']} | {row['rate']:g} | {row_burstiness(row):g} | {m} | "
                  f"{row[m + '_ms']:.1f} / {base[m + '_ms']:.1f} | {100 * measured:+.0f}% | "
                  f"{100 * (ours[m] / theirs[m] - 1):+.0f}% |")


if __name__ == "__main__":
    main()
