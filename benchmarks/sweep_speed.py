"""Time a sweep of 1,000,000 configurations through the Python API.

    python benchmarks/sweep_speed.py

Mixtral-8x7B, request phase on H200: batch (10) × input_len (10) × top_k (10) × num_experts
(10) × ffn (100) = 10^6 combinations, every one valid (top_k ≤ num_experts). A small sweep
first builds and lambdifies the expressions (into an empty, temporary PERFMODEL_CACHE_DIR, so
that is a cold compile); it is reported separately and excluded from the timed sweep. The
last line is ``sweep: N configs in T s`` (median of the timed repeats).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GRID = {
    "batch": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
    "input_len": [128, 256, 512, 1024, 2048, 3072, 4096, 8192, 16384, 32768],
    "top_k": list(range(1, 11)),
    "num_experts": [16, 32, 48, 64, 80, 96, 112, 128, 160, 256],
    "ffn": [256 * i for i in range(1, 101)],
}
REPEATS = 3


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PERFMODEL_CACHE_DIR"] = cache
        t0 = time.perf_counter()
        from perfmodel.sweeps import sweep

        import_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sweep("mixtral-8x7b", {"batch": [1, 2], "top_k": [1, 2]})
        warmup_s = time.perf_counter() - t0
        n_expected = 1
        for values in GRID.values():
            n_expected *= len(values)
        times, n = [], 0
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            table = sweep("mixtral-8x7b", GRID)
            times.append(time.perf_counter() - t0)
            n = len(table)
            del table
        assert n == n_expected, (n, n_expected)
    print(f"import perfmodel.sweeps:            {import_s:8.3f} s")
    print(f"warm-up sweep (cold compile):      {warmup_s:8.3f} s")
    for i, t in enumerate(times, 1):
        print(f"1M sweep, run {i}:                  {t:8.3f} s  ({t / n * 1e9:.0f} ns/config)")
    print(f"sweep: {n} configs in {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
