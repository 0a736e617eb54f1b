#!/usr/bin/env bash
# Device call 1 (lent H200, <= 9.5 min wall): a smoke test of the hf runner, then the kernel bench.
#
#   bash scripts/device_smoke_and_bench.sh            # from the repo root; results under $OUT
#
# Part 1, smoke (~40-70 s; budget 100 s, hard cap 120 s): the six zoo models truncated to 2 layers,
#   B in {1, 4}, S = O = 32: model build, StaticCache prefill, CUDA-graph capture of a decode step
#   (PhiMoE through its rotary patch, else the kernel_sum fallback), sampled replays, torch.profiler
#   split, routing histogram, full unsampled decode at B=4 (--full-run 4x32). -> $OUT/smoke.jsonl
# Part 2, bench (budget 400 s; the full grid usually finishes in ~200-250 s; hard cap budget + 45 s):
#   GEMM bf16/fp8, grouped GEMM (bf16, fp8 last), MoE block per experts implementation, SDPA and
#   attention modules (MLA), memory ops, CUDA-graph kernel cost.
#   -> $OUT/bench/{gemm,grouped_gemm,moe_block,attention,memory}.csv + metadata.json
# Logs: $OUT/run.log. 8 files come back in all (run.log, smoke.jsonl, 6 bench files).
# Typical wall ~5 min; worst case (both hard caps, +10 s kill grace each) 130 + 455 + ~8 s < 600 s.
# Env: PYTHON, OUT, BENCH_BUDGET (or $1), SMOKE_BUDGET, SMOKE_MODELS, MEASURE_EXTRA (local dry runs).
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
BENCH_BUDGET="${1:-${BENCH_BUDGET:-400}}"
SMOKE_BUDGET="${SMOKE_BUDGET:-100}"
SMOKE_MODELS="${SMOKE_MODELS:-olmoe-1b-7b,qwen1.5-moe-a2.7b,deepseek-v2-lite,qwen3-30b-a3b,phi-3.5-moe,mixtral-8x7b}"
# extra measure arguments (e.g. --set overrides for a local CPU dry run); empty on the device
read -r -a EXTRA <<< "${MEASURE_EXTRA:-}"
mkdir -p "$OUT/bench"
LOG="$OUT/run.log"
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$LOG"; }

say "device_smoke_and_bench: OUT=$OUT bench budget ${BENCH_BUDGET} s, commit ${PERFMODEL_GIT_COMMIT:-unknown}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 | tee -a "$LOG"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" 2>&1 | tee -a "$LOG"

say "part 1: smoke"
cap 120 "$PY" -m perfmodel.measuring.measure "$SMOKE_MODELS" \
    --layers 2 --batch 1,4 --input-len 32 --full-run 4x32 \
    --budget-s "$SMOKE_BUDGET" --out "$OUT/smoke.jsonl" ${EXTRA[@]+"${EXTRA[@]}"} 2>&1 | tee -a "$LOG"
smoke_rc=$?
say "smoke exit code $smoke_rc"
"$PY" - "$OUT/smoke.jsonl" <<'PY' 2>&1 | tee -a "$LOG"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()] if __import__("os").path.exists(sys.argv[1]) else []
for r in rows:
    print(f"{r['model']:20s} B={r['batch']:2d} {r['status']:5s} {r.get('decode_method')} "
          f"ttft={r.get('ttft_ms') or 0:.2f}ms itl={r.get('itl_ms') or 0:.3f}ms "
          f"full/sampled={r.get('full_vs_sampled')} notes={r.get('notes')} err={r.get('error')}")
print(f"smoke rows: {len(rows)}, ok: {sum(r['status'] == 'ok' for r in rows)}")
PY

say "part 2: bench"
cap $(( BENCH_BUDGET + 45 )) "$PY" -m perfmodel.calibration.bench --out "$OUT/bench" \
    --budget-s "$BENCH_BUDGET" 2>&1 | tee -a "$LOG"
bench_rc=$?
say "bench exit code $bench_rc; total $(( $(date +%s) - t0 )) s"
ls -la "$OUT" "$OUT/bench" | tee -a "$LOG"
exit $(( smoke_rc != 0 || bench_rc != 0 ))
