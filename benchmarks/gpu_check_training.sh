#!/usr/bin/env bash
# The training paths only a GPU can run, in about 3 minutes: configs/accelerate/fsdp.yaml through
# accelerate's own launcher (CUDA, NCCL, FSDP2 with bf16 mixed precision; the CPU test has to switch
# accelerate's state by hand) on one process, against the same run without FSDP, then a resume from
# its sharded checkpoint. Run it after benchmarks/gpu_check.sh when device time is left; logs go to
# $OUT (or ./gpu-logs). The lent image has accelerate; the other dependencies as gpu_check.sh says.
set -o pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
work=$(mktemp -d)
python3 configs/shapes_data.py "$work/data" >/dev/null || exit 1
for name in fsdp plain; do  # configs/tiny.yaml on that data, bf16, 12 steps, a checkpoint every 6
    sed -e "s#\.\./runs/tiny#$work/$name#" -e "s#\.\./data/shapes#$work/data#g" -e "s/max_steps: 100/max_steps: 12/" \
        -e "s/save_every: 50/save_every: 6/" -e "s/grad_clip: 1.0/grad_clip: 1.0\n  mixed_precision: bf16/" \
        configs/tiny.yaml >"$work/$name.yaml"
done
fsdp="accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 -m janus_like.cli train"
timeout 150 $fsdp "$work/fsdp.yaml" 2>&1 | tail -5 | tee "$out/fsdp_train.log"
timeout 100 python3 -m janus_like.cli train "$work/plain.yaml" 2>&1 | tail -3 | tee "$out/plain_train.log"
cp "$work/fsdp/metrics.json" "$work/fsdp_straight.json"
rm -rf "$work/fsdp/checkpoints/step-00000012" "$work/fsdp/final"
timeout 150 $fsdp "$work/fsdp.yaml" --resume 2>&1 | tail -3 | tee "$out/fsdp_resume.log"
python3 - "$work" <<'EOF' 2>&1 | tee "$out/fsdp_compare.log"
import json, os, sys
work = sys.argv[1]
loss = lambda f: [round(h["loss"], 4) for h in json.load(open(f"{work}/{f}"))["history"]]
straight, plain, resumed = loss("fsdp_straight.json"), loss("plain/metrics.json"), loss("fsdp/metrics.json")
print("FSDP   ", straight, "\nplain  ", plain, "\nresumed", resumed)
print("FSDP vs plain: max |Δloss| =", max(abs(a - b) for a, b in zip(straight, plain)), "(bf16)")
print("resume repeats the losses:", resumed == straight)
print("FSDP engaged (sharded checkpoint written):", os.path.isdir(f"{work}/fsdp/checkpoints/step-00000006/pytorch_model_fsdp_0"))
EOF
