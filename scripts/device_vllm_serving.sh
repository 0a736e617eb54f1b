#!/usr/bin/env bash
# One run on a GPU machine (<= 9.5 min wall): vLLM serving under Poisson arrivals (the async engine,
# `perfmodel measure --serving`), one process per model, through scripts/device_vllm.sh (its
# budgets, timeouts, engine logs and resume).
#
#   source scripts/vllm_setup.sh && bash scripts/device_vllm_serving.sh [PLAN]     # from the repo root
#
# PLAN (or $PLAN) is a ';'-separated list of MODEL|RATES|S|O|N|BUDGET_S[|measure flags] entries,
# e.g. "olmoe-1b-7b|4,16,64|1024|256|200|300|--duration-s 40": rates in requests/s, N requests of
# S prompt and O output tokens per rate (S and O may be percentiles, p50=512,p90=2048: each
# request then has its own, drawn as `perfmodel plan` draws them; S and O "-" with
# "--lengths-file FILE" among the measure flags: each request's pair drawn from FILE). BUDGET_S covers the engine start (60-140 s), the warm-up
# and every rate: the rates share what is left in proportion to their expected spans (N-1)/rate,
# each also capped by --duration-s when given. A budget cut leaves the unmeasured rates for a
# rerun of the same plan. Outputs: $OUT/vllm-serving.jsonl (one row per rate), $OUT/vllm.log,
# $OUT/engine-logs.tgz. Env: OUT, PLAN, RESUME_FROM (rows of earlier runs, copied first; default
# validate/results/h200-vllm-serving.jsonl if present), TOTAL_BUDGET (default 540 s), PYTHON.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
OUT="${OUT:-/tmp/perfmodel-out}"
PLAN="${1:-${PLAN:-olmoe-1b-7b|4,16,64|1024|256|200|300}}"
ROWS="$OUT/vllm-serving.jsonl"
RESUME_FROM="${RESUME_FROM-validate/results/h200-vllm-serving.jsonl}"
mkdir -p "$OUT"
case "$ROWS" in *[[:space:]]*) echo "device_vllm_serving: OUT must not contain spaces ($OUT)"; exit 2;; esac
if [ -n "$RESUME_FROM" ] && [ -f "$RESUME_FROM" ] && [ ! -f "$ROWS" ]; then
    cp "$RESUME_FROM" "$ROWS"
    echo "resuming from $RESUME_FROM ($(wc -l < "$ROWS") rows)" | tee -a "$OUT/vllm.log"
fi
# Each entry becomes a device_vllm.sh entry whose extra flags select the serving run; its own
# --out comes after device_vllm.sh's and wins (the last value of an option counts).
plan=""
IFS=';' read -r -a ENTRIES <<< "$PLAN"
for entry in "${ENTRIES[@]}"; do
    IFS="|" read -r model rates input output requests budget extra <<< "$entry"
    outlen="--output-len $output"
    [ "$input" = "-" ] && outlen=""  # lengths from the entry's --lengths-file
    plan+="${plan:+;}$model|1|$input|$budget|--serving --rate $rates${outlen:+ $outlen}"
    plan+=" --num-requests $requests --out $ROWS${extra:+ $extra}"
done
RESUME_FROM="" OUT="$OUT" PYTHON="$PY" bash scripts/device_vllm.sh "$plan"
rc=$?
"$PY" - "$ROWS" <<'PY' 2>&1 | tee -a "$OUT/vllm.log"
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
except OSError:
    rows = []
for r in rows:
    print(r["model"], "rate", r.get("rate"), r["status"], f"{r.get('completed')}/{r.get('num_requests')}",
          "ttft p50/p90 ms", r.get("ttft_p50_ms"), r.get("ttft_p90_ms"), "itl p50/p90 ms", r.get("itl_p50_ms"),
          r.get("itl_p90_ms"), "served req/s", r.get("completion_rate") and round(r["completion_rate"], 2),
          r.get("error") or "")
print("serving rows:", len(rows))
PY
exit $rc
