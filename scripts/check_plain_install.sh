#!/usr/bin/env bash
# A plain `pip install .` (no extras) into a fresh venv gives a working `perfmodel` from any directory:
# the wheel carries specs, profiles and committed results, and needs no torch.
#   bash scripts/check_plain_install.sh          # from the repo root; ~1-2 min (builds the wheel, installs deps)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "$repo"
cd "$tmp"
"$tmp/venv/bin/perfmodel" --version
"$tmp/venv/bin/perfmodel" list models > models.txt && head -n 3 models.txt
"$tmp/venv/bin/perfmodel" predict mixtral --engine hf --batch 16 -s 512 -o 512 --json --out "$tmp/predict" > predict.json
test -s "$tmp/predict/report.html" && test -s "$tmp/predict/summary.md" && echo "plain install: predict report written"
"$tmp/venv/bin/perfmodel" sweep olmoe --grid batch=1,16 --out "$tmp/sweep" > /dev/null
test -s "$tmp/sweep/report.html" && echo "plain install: sweep report written"
"$tmp/venv/bin/perfmodel" sweep olmoe --gpu h100 --grid quant=none,fp8 --baseline quant=none > sweep.txt
grep -q "h100-sxm: throughput ±" sweep.txt && echo "plain install: sweep --baseline shows the measured change band"
"$tmp/venv/bin/python" -c "import json; p = json.load(open('predict.json')); assert p['itl_s'] > 0 and p['fits_in_memory'], p; print('plain install: predict ok, ITL', round(p['itl_s'] * 1e3, 2), 'ms')"
"$tmp/venv/bin/perfmodel" plan olmoe-1b-7b --rate 2 --input-len 512 --output-len 128 --ttft-p90 2 --itl-p90 0.1 \
    --gpu h200 --max-gpus 2 --out "$tmp/plan" --json > plan.json
test -s "$tmp/plan/report.html" && test -s "$tmp/plan/summary.md" && echo "plain install: plan ok (report written)"
"$tmp/venv/bin/perfmodel" validate olmoe-1b-7b --backend vllm --out "$tmp/validate" > /dev/null
grep -q "by op category: profiled kernels / the model" "$tmp/validate/summary.md" && echo "plain install: validate replay ok"
if "$tmp/venv/bin/python" -c "import torch" 2>/dev/null; then echo "plain install pulled torch" >&2; exit 1; fi
echo "plain install ok"
