"""Time single predictions: warm calls through the Python API, and a cold CLI process.

    python benchmarks/predict_speed.py

- warm API: ``predict("mixtral-8x7b", ...)`` after one call has compiled the expressions;
  median over 1000 calls (a zoo name, so each call also reads the spec; and a ModelSpec);
- cold CLI: a new ``perfmodel predict mixtral --json`` process, with the disk cache of
  compiled functions already filled (the usual case), and with an empty PERFMODEL_CACHE_DIR
  (the first run after installing or after a formula changed).
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
sys.path.insert(0, str(ROOT))

CALLS = 1000
CLI_RUNS = 5


def _cli_command() -> list[str]:
    script = Path(sys.executable).with_name("perfmodel")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "perfmodel"]
    return [*prefix, "predict", "mixtral", "--json"]


def _time_cli(cache_dir: str, runs: int, fresh: bool) -> list[float]:
    times = []
    for _ in range(runs):
        if fresh:
            shutil.rmtree(cache_dir, ignore_errors=True)
        env = {**os.environ, "PERFMODEL_CACHE_DIR": cache_dir}
        t0 = time.perf_counter()
        proc = subprocess.run(_cli_command(), capture_output=True, text=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"perfmodel failed: {proc.stderr.strip()}")
    return times


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        os.environ["PERFMODEL_CACHE_DIR"] = cache
        from perfmodel.prediction import predict
        from perfmodel.specs.model import load_model

        t0 = time.perf_counter()
        predict("mixtral-8x7b", batch=16, input_len=2048, output_len=2048)
        first_s = time.perf_counter() - t0
        spec = load_model("mixtral-8x7b")
        rows = []
        for label, model in (("warm predict('mixtral-8x7b')", "mixtral-8x7b"),
                             ("warm predict(ModelSpec)", spec)):
            samples = []
            for i in range(CALLS):
                t0 = time.perf_counter()
                predict(model, batch=1 + i % 256, input_len=2048, output_len=2048)
                samples.append(time.perf_counter() - t0)
            rows.append((label, f"{statistics.median(samples) * 1e6:10.0f} µs",
                         f"median of {CALLS}"))
        empty = _time_cli(os.path.join(tmp, "cold"), 3, fresh=True)
        _time_cli(os.path.join(tmp, "warm"), 1, fresh=True)  # fill the disk cache
        warm = _time_cli(os.path.join(tmp, "warm"), CLI_RUNS, fresh=False)
    rows.insert(0, ("first predict() in this process", f"{first_s * 1e3:10.0f} ms", "import + compile"))
    rows.append(("CLI process, warm disk cache", f"{statistics.median(warm) * 1e3:10.0f} ms",
                 f"median of {CLI_RUNS}"))
    rows.append(("CLI process, empty cache dir", f"{statistics.median(empty) * 1e3:10.0f} ms",
                 "median of 3"))
    width = max(len(r[0]) for r in rows)
    print(f"{'what':{width}s}  {'time':>13s}  note")
    for label, value, note in rows:
        print(f"{label:{width}s}  {value:>13s}  {note}")


if __name__ == "__main__":
    main()
