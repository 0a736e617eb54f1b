"""Regenerate tests/data/golden_predictions.json (run when a change to the predictions is intended).

    python tests/regen_golden.py

Evaluates every point of :data:`POINTS` with the uncalibrated ``roofline`` engine and writes
the inputs and the metrics of :data:`GOLDEN_METRICS` to the JSON file that
``tests/test_golden.py`` compares against (rel 1e-9). Review the diff of the JSON before
committing it: every changed number is a changed prediction.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_FILE = Path(__file__).resolve().parent / "data" / "golden_predictions.json"

#: Metrics stored for each point (NaN, e.g. the ITL of a prefill, is stored as null).
GOLDEN_METRICS = ("ttft_s", "itl_s", "e2e_s", "throughput_tok_s", "weights_bytes", "kv_cache_bytes",
                  "params")

#: The golden points: the MoE families of the zoo, every phase, bf16 and fp8, TP=2 once,
#: skewed routing once, a checkpoint's own quantization once (gpt-oss's MXFP4 experts), on H200
#: and H100.
POINTS: list[dict[str, Any]] = [
    dict(id="mixtral-request-bf16-h200", model="mixtral-8x7b", gpu="h200-sxm", phase="request",
         workload=dict(batch=16, input_len=2048, output_len=2048, dtype="bf16")),
    dict(id="mixtral-request-bf16-h200-tp2", model="mixtral-8x7b", gpu="h200-sxm", phase="request",
         workload=dict(batch=64, input_len=1024, output_len=512, tp=2, dtype="bf16")),
    dict(id="qwen3-30b-a3b-prefill-fp8-h200", model="qwen3-30b-a3b", gpu="h200-sxm", phase="prefill",
         workload=dict(batch=8, input_len=4096, output_len=1, dtype="fp8")),
    dict(id="qwen3-30b-a3b-request-bf16-h100-skew", model="qwen3-30b-a3b", gpu="h100-sxm",
         phase="request", workload=dict(batch=2, input_len=128, output_len=128, dtype="bf16", skew=0.5)),
    dict(id="deepseek-v2-lite-decode-bf16-h100", model="deepseek-v2-lite", gpu="h100-sxm",
         phase="decode", workload=dict(batch=32, input_len=1024, output_len=1, context=4096, dtype="bf16")),
    dict(id="olmoe-1b-7b-request-fp8-h100", model="olmoe-1b-7b", gpu="h100-sxm", phase="request",
         workload=dict(batch=4, input_len=512, output_len=256, dtype="fp8")),
    dict(id="gpt-oss-20b-request-bf16-h200", model="gpt-oss-20b", gpu="h200-sxm", phase="request",
         workload=dict(batch=1, input_len=8192, output_len=1024, dtype="bf16", quant="none")),
    dict(id="gpt-oss-120b-request-checkpoint-mxfp4-h100", model="gpt-oss-120b", gpu="h100-sxm",
         phase="request", workload=dict(batch=16, input_len=1024, output_len=256, dtype="bf16")),
    dict(id="phi-3.5-moe-decode-fp8-h200", model="phi-3.5-moe", gpu="h200-sxm", phase="decode",
         workload=dict(batch=128, input_len=2048, output_len=1, context=2048, dtype="fp8")),
]


def evaluate_point(point: dict[str, Any]) -> dict[str, float | None]:
    """The golden metrics of one point, NaN as None."""
    from perfmodel.prediction import predict

    p = predict(point["model"], gpu=point["gpu"], engine="roofline", phase=point["phase"],
                **point["workload"])
    return {m: (None if math.isnan(p.metrics[m]) else float(p.metrics[m])) for m in GOLDEN_METRICS}


def main() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    points = [{**point, "engine": "roofline", "metrics": evaluate_point(point)} for point in POINTS]
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "about": "Golden predictions of perfmodel (roofline engine). Regenerate with "
                 "`python tests/regen_golden.py` when a change to the predictions is intended.",
        "metrics": list(GOLDEN_METRICS),
        "points": points,
    }
    GOLDEN_FILE.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {len(points)} points to {GOLDEN_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
