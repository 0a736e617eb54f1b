#!/usr/bin/env bash
# Device call (lent H200, ~5 min): what-if points no profile is fitted on.
#
#   bash scripts/device_whatif.sh            # from the repo root; results under $OUT
#
# 1. The seed study's hyperparameter sweeps on a Mixtral-8x7B skeleton cut to 8 layers:
#    FFN 1792/3584/7168/14336 (E=8, k=2), experts 16/32/64 (FFN 1792, k=2), top-k 1/4/8
#    (E=8, FFN 14336), at B in {1, 16, 64}, S = O = 512.
# 2. Two held-out models at a batch and length never measured: B in {8, 48}, S = O = 1024.
# Output: $OUT/whatif.jsonl (one row per point, the measure schema), $OUT/whatif.log.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-$(command -v python3 || command -v python)}"
OUT="${OUT:-/tmp/perfmodel-out}"
mkdir -p "$OUT"
LOG="$OUT/whatif.log"
run() { "$PY" -m perfmodel.measuring.measure "$@" --out "$OUT/whatif.jsonl" 2>&1 | tee -a "$LOG"; }
for set in "ffn=1792" "ffn=3584" "ffn=7168" "ffn=14336" \
           "ffn=1792 num_experts=16" "ffn=1792 num_experts=32" "ffn=1792 num_experts=64" \
           "top_k=1" "top_k=4" "top_k=8"; do
    args=()
    for kv in $set; do args+=(--set "$kv"); done
    run mixtral-8x7b --layers 8 "${args[@]}" --batch 1,16,64 --input-len 512 --budget-s 60
done
run qwen3-30b-a3b,deepseek-v2-lite --batch 8,48 --input-len 1024 --budget-s 90
"$PY" - "$OUT/whatif.jsonl" <<'PY' 2>&1 | tee -a "$LOG"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    print(r["model"], r.get("overrides"), r.get("layers"), r["batch"], r["input_len"], r["status"],
          round(r.get("ttft_ms") or 0, 1), round(r.get("itl_ms") or 0, 2))
print("rows:", len(rows))
PY
