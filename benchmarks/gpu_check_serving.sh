#!/usr/bin/env bash
# Serving at Janus-Pro-1B shapes (random weights, bf16) on a GPU, for a third device call after
# benchmarks/gpu_check.sh: the scheduler's 16 concurrent text-to-image calls against one at a time,
# then the HTTP server under 16 clients against one at a time, each printing its ratio. Logs go to
# $OUT (or ./gpu-logs); the dependencies as gpu_check.sh says, plus fastapi, uvicorn, httpx.
set -o pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 240 python3 benchmarks/scheduler_throughput.py --sizes 1b --device cuda 2>&1 | tee "$out/scheduler_1b.log"
timeout 300 python3 benchmarks/serve_load.py --random 1b --device cuda --scenario t2i --requests 32 2>&1 \
    | tee "$out/serve_load_1b.log"
