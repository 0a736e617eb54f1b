#!/usr/bin/env bash
# Device call 2 (lent H200, <= 9.5 min wall): the hf dataset of the seed study's six models.
#
#   bash scripts/device_measure.sh [BUDGET_S]          # from the repo root; default budget 470 s
#
# Points: Mixtral-8x7B, Qwen3-30B-A3B, OLMoE-1B-7B, DeepSeek-V2-Lite, Phi-3.5-MoE, Qwen1.5-MoE-A2.7B
# at B in {1, 16, 32, 64}, S = O in {128, 512, 2048} (72 points), full unsampled decodes at
# olmoe 16x512, qwen3 16x128 and mixtral 1x128. Order: phase 1 = all six models at S = O in
# {128, 512} (cheapest model first), phase 2 = all six at S = O = 2048. The sweep does not start a
# point whose estimate no longer fits in the budget, so it ends cleanly; rerun to resume.
#
# Estimates (H200, from perfmodel.measuring.hf_estimate, coarse without pydantic, plus model builds): phase 1 ~200 s,
# phase 2 ~220 s (Mixtral B=64 S=O=2048 needs ~87 GiB weights + 32 GiB KV + >15 GiB of MoE
# activations: expected OOM, recorded as a row), builds ~30 s, imports ~15 s. The budget
# (470 s) plus one in-flight point (<= ~40 s) keeps the call under ~9 min; hard cap 540 s.
#
# Resume across calls: $OUT starts empty on each call, so the rows of an earlier call travel in
# the tree: if validate/results/h200-hf.jsonl exists (or RESUME_FROM points to a file), it is
# copied to $OUT/measure.jsonl first and its points are skipped; the output then holds all rows.
# Outputs: $OUT/measure.jsonl, $OUT/measure.log.
# Env: PYTHON, OUT, BUDGET (or $1), RESUME_FROM, MODELS, BATCHES, LENGTHS, FULL_RUN, MEASURE_EXTRA.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-$(command -v python3 || command -v python)}"
if command -v timeout >/dev/null; then
    cap() { local s=$1; shift; timeout --kill-after=10 "$s" "$@"; }
else
    cap() { shift; "$@"; }
fi
OUT="${OUT:-/tmp/perfmodel-out}"
BUDGET="${1:-${BUDGET:-470}}"
RESUME_FROM="${RESUME_FROM:-validate/results/h200-hf.jsonl}"
MODELS="${MODELS:-olmoe-1b-7b,qwen1.5-moe-a2.7b,deepseek-v2-lite,qwen3-30b-a3b,phi-3.5-moe,mixtral-8x7b}"
BATCHES="${BATCHES:-1,16,32,64}"
LENGTHS="${LENGTHS:-128,512;2048}"
FULL_RUN="${FULL_RUN:-olmoe-1b-7b:16x512,qwen3-30b-a3b:16x128,mixtral-8x7b:1x128}"
read -r -a EXTRA <<< "${MEASURE_EXTRA:-}"   # e.g. --set overrides for a local CPU dry run
mkdir -p "$OUT"
LOG="$OUT/measure.log"
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$LOG"; }

if [ -f "$RESUME_FROM" ] && [ ! -f "$OUT/measure.jsonl" ]; then
    cp "$RESUME_FROM" "$OUT/measure.jsonl"
    say "resuming from $RESUME_FROM ($(wc -l < "$OUT/measure.jsonl") rows)"
fi
say "device_measure: budget ${BUDGET} s, commit ${PERFMODEL_GIT_COMMIT:-unknown}"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | tee -a "$LOG"

cap $(( BUDGET + 70 )) "$PY" -m perfmodel.measuring.measure "$MODELS" \
    --batch "$BATCHES" --input-len "$LENGTHS" --full-run "$FULL_RUN" \
    --budget-s "$BUDGET" --out "$OUT/measure.jsonl" ${EXTRA[@]+"${EXTRA[@]}"} 2>&1 | tee -a "$LOG"
rc=$?
say "measure exit code $rc; total $(( $(date +%s) - t0 )) s"
"$PY" - "$OUT/measure.jsonl" <<'PY' 2>&1 | tee -a "$LOG"
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = collections.Counter((r["model"], r["status"]) for r in rows)
for (m, s), n in sorted(by.items()):
    print(f"{m:20s} {s:5s} {n}")
print(f"rows: {len(rows)}")
PY
exit $rc
