#!/usr/bin/env bash
# On the GPU machine: assemble the carried vLLM under /tmp/site (idempotent). Source it, then run Python:
#   source scripts/vllm_setup.sh
# Needs /tmp/chunks/part.0 and part.1 (copied there by the first transfers; when the tree and a part
# together pass the 64 MiB a call carries, split each part in two folders and join them there with cat)
# and .vx3/ beside this tree. vLLM's fp8 model build (--quantization fp8) imports loguru, which the
# bundle's wheel list lacks: put loguru's wheel in .vx3 too (pip download loguru==0.7.3 --no-deps -d .vx3).
if [ ! -f /tmp/site/vllm/__init__.py ]; then
  ls /tmp/chunks/part.0 /tmp/chunks/part.1 >/dev/null || { echo "vllm parts missing in /tmp/chunks"; return 3 2>/dev/null || exit 3; }
  mkdir -p /tmp/site
  cat /tmp/chunks/part.0 /tmp/chunks/part.1 | tar xJf - -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .vx3/*.whl
fi
for whl in .vx3/loguru-*.whl; do  # carried after the first setup: install it on its own
  [ -f "$whl" ] && [ ! -d /tmp/site/loguru ] && python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target /tmp/site "$whl"
done
[ -d /tmp/site/loguru ] || echo "vllm_setup: no loguru in .vx3: --quantization fp8 rows will fail (see above)"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
  VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ENABLE_V1_MULTIPROCESSING=0
