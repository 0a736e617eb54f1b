#!/usr/bin/env bash
# Device call (lent GPU, <= 9.5 min wall): real vLLM on the seed study's models, one process each.
#
#   source scripts/vllm_setup.sh && bash scripts/device_vllm.sh [PLAN]     # from the repo root
#
# Needs the vLLM bundle assembled by scripts/vllm_setup.sh (see ../shared/vllm-device/README.md
# for the three transfers). PLAN (or $PLAN) is a ';'-separated list of MODEL|BATCHES|LENGTHS|BUDGET_S
# entries, measured in order, each in its own process (vLLM keeps GPU memory for the life of the
# process) with its own time budget (engine start included: 60-140 s). LENGTHS uses the measure
# command's syntax (S = O; ',' within a phase, ';' between phases -> written here as '/').
# A model whose budget runs out keeps the rows it has; rerunning the same plan resumes.
# Outputs: $OUT/vllm.jsonl (rows, the measure schema), $OUT/vllm.log (our log), $OUT/engine-*.log
# (vLLM's own log per model: its JIT-monitor lines, then the tail; packed into $OUT/engine-logs.tgz at the end).
# ROUTING=1 adds, per entry, a routing probe in a process of its own (an eager engine of the same
# config and seed: which experts the router picks under random and greedy sampling, and the skew
# that implies) -> $OUT/routing.jsonl; ROUTING=model1,model2 probes only the entries of those models.
# Env: OUT, PLAN, ROUTING, RESUME_FROM (rows of earlier calls, copied first, whose point ids are
# not measured again; none by default), TOTAL_BUDGET (default 540 s).
# An entry over several GPUs (--tp/--pp/--dp N > 1 in its extra flags, e.g.
# "mixtral-8x7b|1,16|128|300|--tp 4") runs with VLLM_ENABLE_V1_MULTIPROCESSING unset (vLLM's
# default: the engine core in a process of its own beside the tp*pp workers), the way vLLM runs
# multi-GPU engines; one-GPU entries keep vllm_setup.sh's in-process engine core, as the committed
# rows were measured, unless their extra flags hold --engine-process (point ids gain mp=1).
# LENGTHS "-" passes no --input-len: the entry's extra flags give the lengths (--lengths-file).
# Rows go to one file and resume by point id: to repeat an entry, give the call another OUT, or
# give the entry --passes N (each point measured N times over, in turn, on its one engine).
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-$(command -v python3 || command -v python)}"
OUT="${OUT:-/tmp/perfmodel-out}"
PLAN="${1:-${PLAN:-olmoe-1b-7b|1,16,64|128,512|150}}"
TOTAL_BUDGET="${TOTAL_BUDGET:-540}"
mkdir -p "$OUT"
LOG="$OUT/vllm.log"
ROWS="$OUT/vllm.jsonl"
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$LOG"; }
multi_gpu() {  # whether extra flags spread an entry over several GPUs (--tp/--pp/--dp N > 1)
    local -a a
    read -r -a a <<< "${1//=/ }"
    local i
    for (( i = 0; i + 1 < ${#a[@]}; i++ )); do
        case "${a[i]}" in --tp|--pp|--dp) [[ "${a[i+1]}" =~ ^[0-9]+$ ]] && [ "${a[i+1]}" -gt 1 ] && return 0;; esac
    done
    return 1
}
if [ -n "${RESUME_FROM:-}" ] && [ -f "$RESUME_FROM" ] && [ ! -f "$ROWS" ]; then
    cp "$RESUME_FROM" "$ROWS"
    say "resuming from $RESUME_FROM ($(wc -l < "$ROWS") rows)"
fi
say "device_vllm: total budget ${TOTAL_BUDGET} s, commit ${PERFMODEL_GIT_COMMIT:-unknown}"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | tee -a "$LOG"
nx=0
IFS=';' read -r -a ENTRIES <<< "$PLAN"
for entry in "${ENTRIES[@]}"; do
    IFS="|" read -r model batches lengths budget extra <<< "$entry"
    left=$(( TOTAL_BUDGET - ($(date +%s) - t0) ))
    [ "$budget" -gt "$left" ] && budget=$left
    if [ "$budget" -lt 60 ]; then say "skip $model: ${left} s left"; continue; fi
    say "measure $model B=$batches S=O=$lengths budget ${budget} s${extra:+ ($extra)}"
    elog="$OUT/engine-${model//[^A-Za-z0-9._-]/_}${extra:+-x$((++nx))}.log"
    run=()
    multi_gpu "${extra:-}" && run=(env -u VLLM_ENABLE_V1_MULTIPROCESSING)
    lens=(--input-len "${lengths//\//;}")
    [ "$lengths" = "-" ] && lens=()  # the entry's flags give the lengths (--serving --lengths-file)
    timeout --kill-after=10 $(( budget + 60 )) "${run[@]}" "$PY" -m perfmodel.measuring.measure "$model" \
        --backend vllm --batch "$batches" "${lens[@]}" \
        --budget-s "$budget" --out "$ROWS" ${extra:-} > "$elog.full" 2>&1
    rc=$?
    { grep -i "jit_monitor" "$elog.full" | head -n 400  # every kernel compiled after the engine's warm-up
      grep -v "^\s*$" "$elog.full" | grep -iv "it/s\]$" | tail -n 150; } > "$elog"
    rm -f "$elog.full"
    say "$model exit code $rc"
    if [ "${ROUTING:-0}" = 1 ] || [[ ",${ROUTING:-}," == *",$model,"* ]]; then  # which experts the router picks, from an eager engine (~30 s)
        timeout --kill-after=10 240 "${run[@]}" "$PY" -m perfmodel.measuring.measure "$model" --backend vllm \
            --routing-probe --batch "$batches" "${lens[@]}" --out "$OUT/routing.jsonl" \
            ${extra:-} >> "$elog" 2>&1
        say "$model routing probe exit code $?"
    fi
    grep -E "^\[|done in|error|Error|vllm engine ready|default MoE config" "$elog" | tail -n 8 | tee -a "$LOG"
done
"$PY" - "$ROWS" <<'PY' 2>&1 | tee -a "$LOG"
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
except OSError:
    rows = []
for r in rows:
    print(r["model"], r["batch"], r["input_len"], r["status"], round(r.get("ttft_ms") or 0, 1),
          round(r.get("itl_ms") or 0, 3), r.get("engine_itl_ms") and round(r["engine_itl_ms"], 3))
print("rows:", len(rows))
PY
(cd "$OUT" && tar czf engine-logs.tgz engine-*.log && rm -f engine-*.log)  # at most 8 files come back
say "total $(( $(date +%s) - t0 )) s"
