#!/usr/bin/env bash
# One run on a machine of several GPUs (<= 9.5 min wall): the collectives, then vLLM over
# tensor, expert and pipeline parallel layouts (the seed study's E7, 1 -> 4 GPUs, and Mixtral-8x7B
# at TP=4, the paper's setup), at B in {1, 16, 64} and S = O in {128, 2048}.
#
#   source scripts/vllm_setup.sh && bash scripts/device_vllm_multi.sh       # from the repo root
#
# 1. `perfmodel calibrate collectives` (NCCL all-reduce ... send/recv over every GPU, NVLink
#    multicast off) -> $OUT/collectives/, unless calibration/data/*-x<N>/collectives.csv is
#    committed already (COLLECTIVES=1 runs it anyway, COLLECTIVES=0 never).
# 2. scripts/device_vllm.sh over the entries of LAYOUTS below whose GPUs (tp*pp) fit this machine
#    (nvidia-smi -L | wc -l), in order: each entry in a process of its own with its own budget,
#    multi-GPU entries under vLLM's default multiprocessing engine (see device_vllm.sh).
# Resumable: RESUME_FROM (default validate/results/h200-vllm.jsonl) is copied into $OUT/vllm.jsonl
# first, so points measured before (by an earlier run, or the committed one-GPU rows) are skipped;
# run the same command again until the log says nothing is left.
# vLLM's expert parallelism reuses the tp GPUs of a pipeline stage (whole experts, E/tp on each),
# so "PP+EP" is PP=2 x TP=2 with EP on 4 GPUs (with tp = 1, EP changes nothing); "--dp N --dp-mode vllm
# --expert-parallel" is vLLM's DP+EP, N ranks whose MoE layers span them, experts spread over all N GPUs.
# Env: OUT, TOTAL_BUDGET (default 540 s), COLLECTIVES, COLLECTIVES_BUDGET (default 90 s),
# RESUME_FROM, PYTHON; GPUS overrides the count nvidia-smi gives.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
OUT="${OUT:-/tmp/perfmodel-out}"
TOTAL_BUDGET="${TOTAL_BUDGET:-540}"
BATCHES="16,64,1"           # B = 16 first: E7's point (B = 16, S = O = 2048)
LENGTHS="2048/128"          # phases: S = O = 2048 first, then 128
# MODEL|BUDGET_S|measure flags; the order is the order of measuring.
LAYOUTS=(
    "qwen3-30b-a3b|200|"
    "qwen3-30b-a3b|240|--tp 4"
    "qwen3-30b-a3b|240|--tp 4 --expert-parallel"
    "qwen3-30b-a3b|240|--pp 4"
    "qwen3-30b-a3b|240|--tp 2 --pp 2 --expert-parallel"
    "qwen3-30b-a3b|260|--dp 4 --dp-mode vllm --expert-parallel"
    "mixtral-8x7b|300|--tp 4"
    "mixtral-8x7b|300|"
    "qwen3-30b-a3b|240|--tp 2"
    "qwen3-30b-a3b|240|--tp 2 --expert-parallel"
    "qwen3-30b-a3b|240|--pp 2"
    "mixtral-8x7b|300|--tp 4 --expert-parallel"
    "mixtral-8x7b|360|--tp 2"
    "mixtral-8x7b|360|--tp 2 --expert-parallel"
    "mixtral-8x7b|360|--pp 2"
    "mixtral-8x7b|300|--pp 4"
    "mixtral-8x7b|300|--tp 2 --pp 2 --expert-parallel"
    "deepseek-v2-lite|180|"
    "deepseek-v2-lite|200|--tp 2"
    "deepseek-v2-lite|200|--tp 2 --expert-parallel"
    "deepseek-v2-lite|200|--tp 4"
    "deepseek-v2-lite|200|--tp 4 --expert-parallel"
    "qwen3-30b-a3b|260|--dp 2 --dp-mode vllm --expert-parallel"
    "deepseek-v2-lite|220|--dp 2 --dp-mode vllm --expert-parallel"
    "deepseek-v2-lite|220|--dp 4 --dp-mode vllm --expert-parallel"
)
mkdir -p "$OUT"
t0=$(date +%s)
GPUS="${GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')}"
echo "device_vllm_multi: $GPUS GPU(s), total budget ${TOTAL_BUDGET} s" | tee -a "$OUT/vllm.log"
if [ "${GPUS:-0}" -lt 1 ]; then echo "device_vllm_multi: no GPU here" | tee -a "$OUT/vllm.log"; exit 3; fi

committed=$(ls calibration/data/*-x"$GPUS"/collectives.csv 2>/dev/null | head -n 1)
if [ "$GPUS" -ge 2 ] && { [ "${COLLECTIVES:-}" = 1 ] || { [ -z "$committed" ] && [ "${COLLECTIVES:-}" != 0 ]; }; }; then
    budget="${COLLECTIVES_BUDGET:-90}"
    echo "collectives over $GPUS GPUs, budget ${budget} s" | tee -a "$OUT/vllm.log"
    timeout --kill-after=10 $(( budget + 60 )) "$PY" -m perfmodel calibrate collectives \
        --out "$OUT/collectives" --budget-s "$budget" 2>&1 | tail -n 20 | tee -a "$OUT/vllm.log"
else
    echo "collectives: skipped (${committed:-one GPU or COLLECTIVES=0})" | tee -a "$OUT/vllm.log"
fi

gpus_of() {  # GPUs measure flags use: tp * pp * dp
    local -a a
    read -r -a a <<< "$1"
    local i n=1
    for (( i = 0; i + 1 < ${#a[@]}; i++ )); do
        case "${a[i]}" in --tp|--pp|--dp) n=$(( n * a[i+1] ));; esac
    done
    echo "$n"
}
plan=""
for layout in "${LAYOUTS[@]}"; do
    IFS="|" read -r model budget flags <<< "$layout"
    [ "$(gpus_of "$flags")" -le "$GPUS" ] || continue
    plan+="${plan:+;}$model|$BATCHES|$LENGTHS|$budget|$flags"
done
echo "plan for $GPUS GPU(s): $plan" >> "$OUT/vllm.log"
left=$(( TOTAL_BUDGET - ($(date +%s) - t0) ))
RESUME_FROM="${RESUME_FROM-validate/results/h200-vllm.jsonl}" TOTAL_BUDGET="$left" OUT="$OUT" PYTHON="$PY" \
    bash scripts/device_vllm.sh "$plan"
