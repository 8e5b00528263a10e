"""Which mixed precision a run computes in: `auto` takes half precision only where the hardware has it.

A CPU without AVX512-BF16 or AMX has no bf16 matmul (janus_like/hardware.py): the default model's
stage-1 step took 26.1 s under bf16 autocast against 1.72 s in float32 on one (docs/training.md),
and 0.44-0.72 s in bf16 on a CPU with AMX.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..hardware import cpu_multiplies

CHOICES = ("auto", "no", "bf16", "fp16")


def resolve(setting: str | None, on_cpu: bool) -> str | None:
    """The precision accelerate gets for `training.mixed_precision` = `setting` (None: the launcher's).

    auto: bf16 where the device computes it natively, fp16 on a CUDA GPU without bf16, else no.
    An explicit bf16 on a CPU without it stays bf16 (it is the same maths) with a warning.
    """
    if setting == "auto":
        if on_cpu:
            return "bf16" if cpu_multiplies(torch.bfloat16) else "no"
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "fp16"
        return "bf16"
    if setting == "bf16" and on_cpu and not cpu_multiplies(torch.bfloat16):
        tqdm.write(
            "warning: training.mixed_precision = bf16 on a CPU without AVX512-BF16 or AMX: its matmuls run "
            "tens of times slower than float32 here; `auto` chooses float32 on such a CPU"
        )
    return setting
