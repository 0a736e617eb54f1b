"""Time the capacity planner on its headline question, as a new CLI process.

    python benchmarks/plan_speed.py

``perfmodel plan mixtral --rate 20 --input-len 1024 --output-len 256 --ttft-p90 1.0
--itl-p90 0.05 --gpu h100,h200 --out DIR --json``: the search over both GPUs, the simulation of
the candidates and the HTML report, with the disk cache of compiled functions already filled
(the usual case, median of a few runs) and with an empty ``PERFMODEL_CACHE_DIR`` (the first run
after installing or after a formula changed).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 3
QUESTION = ["plan", "mixtral", "--rate", "20", "--input-len", "1024", "--output-len", "256",
            "--ttft-p90", "1.0", "--itl-p90", "0.05", "--gpu", "h100,h200", "--json"]


def _command(out: str) -> list[str]:
    script = Path(sys.executable).with_name("perfmodel")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "perfmodel"]
    return [*prefix, *QUESTION, "--out", out]


def _time(cache_dir: str, out: str, fresh: bool) -> float:
    if fresh:
        shutil.rmtree(cache_dir, ignore_errors=True)
    env = {**os.environ, "PERFMODEL_CACHE_DIR": cache_dir}
    t0 = time.perf_counter()
    proc = subprocess.run(_command(out), capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"perfmodel plan failed: {proc.stderr.strip()}")
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache, out = os.path.join(tmp, "cache"), os.path.join(tmp, "plan")
        cold = _time(cache, out, fresh=True)
        warm = [_time(cache, out, fresh=False) for _ in range(RUNS)]
    print(f"perfmodel plan (the headline question), a new process: empty cache {cold:.1f} s; "
          f"warm cache median of {RUNS} {statistics.median(warm):.1f} s ({min(warm):.1f}-{max(warm):.1f} s)")


if __name__ == "__main__":
    main()
