#!/usr/bin/env bash
# Regenerate every committed validation report from the committed measurements and profiles:
# the offline reports (validate/results/h200-{hf,vllm}-validation.md), one serving report per
# serving rows file (validate/results/h200-vllm-serving*-validation.md) and the paper report
# (reports/paper). No GPU: each is a replay. Run after `perfmodel calibrate fit`.
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

for rows in "$results"/h200-vllm-serving*.jsonl; do
    case "$rows" in *-steps.jsonl|*-tokens.jsonl) continue ;; esac
    name=$(basename "$rows" .jsonl)
    "$PERFMODEL" validate all --serving --results "$rows" --out "$work/$name" > /dev/null
    cp "$work/$name/summary.md" "$results/$name-validation.md"
    echo "wrote $results/$name-validation.md"
done

"$PERFMODEL" report paper --gpu h100-sxm --engine vllm --out reports/paper > /dev/null
echo "wrote reports/paper"
