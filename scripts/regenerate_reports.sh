#!/usr/bin/env bash
# Regenerate every committed validation report from the committed measurements and profiles:
# the offline reports (validate/results/h200-{hf,vllm}-validation.md; the H100's,
# h100-{hf,vllm}-validation.md; the H200's fits carried to it, h100-{hf,vllm}-transfer-validation.md;
# the H100's fits carried to the H200, h200-{hf,vllm}-transfer-validation.md), one serving report per
# serving rows file (validate/results/{h200,h100}-vllm-serving*-validation.md), each GPU's change band
# (validate/results/{h200,h100}-vllm-changes.json), the fused-MoE ops against the kernel timed alone
# where a GPU has such timings (validate/results/h100-vllm-moe-kernel-validation.md), the model's
# engine step against the profiled steps that add a prompt to running decodes
# (validate/results/{h200,h100}-vllm-mixed-steps-validation.md) and the paper report (reports/paper).
# No GPU: each is a replay. Run after `perfmodel calibrate fit`.
#
#   bash scripts/regenerate_reports.sh            # all of them
#   PERFMODEL=.venv/bin/perfmodel bash scripts/regenerate_reports.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PERFMODEL=${PERFMODEL:-perfmodel}
results=validate/results
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for backend in hf vllm; do
    "$PERFMODEL" validate all --backend "$backend" --out "$work/$backend" > /dev/null
    cp "$work/$backend/summary.md" "$results/h200-$backend-validation.md"
    echo "wrote $results/h200-$backend-validation.md"
done

# the H100, per engine: its own fit (vllm's anchored on the H200's), and the H200's fit carried to it
# (every row held out)
for backend in hf vllm; do
    "$PERFMODEL" validate all --backend "$backend" --gpu h100-sxm --out "$work/h100-$backend" > /dev/null
    cp "$work/h100-$backend/summary.md" "$results/h100-$backend-validation.md"
    "$PERFMODEL" validate all --backend "$backend" --gpu h100-sxm --fitted-on h200-sxm \
        --out "$work/h100-$backend-transfer" > /dev/null
    cp "$work/h100-$backend-transfer/summary.md" "$results/h100-$backend-transfer-validation.md"
    echo "wrote $results/h100-$backend-validation.md and $results/h100-$backend-transfer-validation.md"
done
# and the H100's fits carried to the H200: hf's as committed; vllm's fitted on the H100's rows alone
# (--anchor none: the committed one holds the H200's host terms, and a transfer from it is refused)
"$PERFMODEL" validate all --backend hf --gpu h200-sxm --fitted-on h100-sxm --out "$work/h200-hf-transfer" > /dev/null
cp "$work/h200-hf-transfer/summary.md" "$results/h200-hf-transfer-validation.md"
"$PERFMODEL" calibrate fit --engine vllm --gpu h100-sxm --anchor none --out "$work/h100-sxm-vllm-own.yaml" > /dev/null
"$PERFMODEL" validate all --backend vllm --gpu h200-sxm --fitted-on "$work/h100-sxm-vllm-own.yaml" \
    --out "$work/h200-vllm-transfer" > /dev/null
cp "$work/h200-vllm-transfer/summary.md" "$results/h200-vllm-transfer-validation.md"
echo "wrote $results/h200-hf-transfer-validation.md and $results/h200-vllm-transfer-validation.md"

for rows in "$results"/h[12]00-vllm-serving*.jsonl; do
    case "$rows" in *-steps.jsonl|*-tokens.jsonl) continue ;; esac
    name=$(basename "$rows" .jsonl)
    gpu=h200-sxm
    case "$name" in h100-*) gpu=h100-sxm ;; esac
    "$PERFMODEL" validate all --serving --gpu "$gpu" --results "$rows" --out "$work/$name" > /dev/null
    cp "$work/$name/summary.md" "$results/$name-validation.md"
    echo "wrote $results/$name-validation.md"
done

# the model's changes against measured pairs that differ in one knob (read by sweep --baseline)
for gpu in h200-sxm h100-sxm; do
    "$PERFMODEL" validate all --changes --gpu "$gpu" > /dev/null
    echo "wrote $results/${gpu%%-*}-vllm-changes.json"
done

# the fused-MoE ops against vLLM's kernel timed alone, where a GPU has such timings
for gpu in h200-sxm h100-sxm; do
    [ -f "$results/${gpu%%-*}-vllm-moe-kernel.jsonl" ] || continue
    "$PERFMODEL" validate all --moe-kernel --gpu "$gpu" > /dev/null
    echo "wrote $results/${gpu%%-*}-vllm-moe-kernel-validation.md"
done

# the model's engine step against vLLM's profiled steps that add a prompt to running decodes
for gpu in h200-sxm h100-sxm; do
    [ -f "$results/${gpu%%-*}-vllm-mixed-steps.jsonl" ] || continue
    "$PERFMODEL" validate all --mixed-steps --gpu "$gpu" > /dev/null
    echo "wrote $results/${gpu%%-*}-vllm-mixed-steps-validation.md"
done

"$PERFMODEL" report paper --gpu h100-sxm --engine vllm --out reports/paper > /dev/null
echo "wrote reports/paper"
