#!/usr/bin/env bash
# On the GPU machine: assemble the carried vLLM under /tmp/site (idempotent). Source it, then run Python:
#   source scripts/vllm_setup.sh
# Needs /tmp/chunks/part.0 and part.1 (copied there by the first two transfers) and .vx3/ beside this tree.
if [ ! -f /tmp/site/vllm/__init__.py ]; then
  ls /tmp/chunks/part.0 /tmp/chunks/part.1 >/dev/null || { echo "vllm parts missing in /tmp/chunks"; return 3 2>/dev/null || exit 3; }
  mkdir -p /tmp/site
  cat /tmp/chunks/part.0 /tmp/chunks/part.1 | tar xJf - -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .vx3/*.whl
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
  VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ENABLE_V1_MULTIPROCESSING=0
