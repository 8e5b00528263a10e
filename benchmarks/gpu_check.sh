#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go, most important first: the Janus-Pro-1B generation
# benchmark (issue 4's GPU target), the `gpu`-marked tests, the memory benchmarks on CUDA, then a
# profile of a compiled drawing (where a step spends its time). Each step has a time limit, so that
# one stuck step leaves the rest their turn; together at most 590 s, one device call (the first run
# on an H200 took about 5 minutes). Logs go to $OUT (or ./gpu-logs). A machine whose image lacks
# this project's dependencies needs them first (transformers>=5.24, diffusers, vector-quantize-pytorch
# and its einx/torch-einops-utils/loguru/frozendict, peft), e.g. as wheels installed with --no-deps
# into a folder on PYTHONPATH; the README's "On a GPU" says how.
set -o pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the scripts import janus_like from this checkout
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$out/gpu.txt"
timeout 300 python3 benchmarks/generate.py --device cuda --sizes 1b 2>&1 | tee "$out/generate_1b.log"
timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_checkpoints.py 2>&1 | tee "$out/gpu_tests.log"
timeout 40 python3 benchmarks/loss_memory.py --device cuda 2>&1 | tee "$out/loss_memory.log"
timeout 40 python3 benchmarks/lora_memory.py --device cuda 2>&1 | tee "$out/lora_memory.log"
timeout 110 python3 benchmarks/decode_attention.py --no-kernels --profile-engine 2>&1 | tee "$out/decode_profile.log"
