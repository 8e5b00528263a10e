"""What this machine's CPU multiplies natively: half precision without it is a scalar loop.

On a 2-core AMD EPYC with AVX2 alone, a decode-shaped 1x2048 @ 2048x2048 matmul took 0.9 ms in
float32, 33 ms in bfloat16 and 35 ms in float16, and the default model's training step 1.72 s in
float32 against 26.1 s under bf16 autocast (docs/benchmarks.md).
"""

from __future__ import annotations

import warnings

import torch

# torch.cpu's capability queries are private, and no public API says whether a half type is native
_NATIVE_CHECKS = {
    torch.bfloat16: ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
    torch.float16: ("_is_amx_fp16_supported",),
}


def cpu_multiplies(dtype: torch.dtype) -> bool:
    """The CPU multiplies `dtype` in hardware (float32 always; bf16 with AVX512-BF16 or AMX; fp16 with AMX-FP16)."""
    if dtype not in _NATIVE_CHECKS:
        return True
    return any(getattr(torch.cpu, name, lambda: False)() for name in _NATIVE_CHECKS[dtype])


def warn_if_slow_on_cpu(dtype: torch.dtype, device: torch.device) -> None:
    """Warn when weights of `dtype` on `device` would run tens of times slower than float32."""
    if device.type == "cpu" and not cpu_multiplies(dtype):
        name = str(dtype).removeprefix("torch.")
        warnings.warn(
            f"the model's weights are {name}, and this CPU has no {name} matmul (bfloat16 needs AMX or "
            "AVX512-BF16, float16 AMX-FP16): it runs tens of times slower than float32; load with "
            "dtype='float32' (the CPU default) unless memory forbids it",
            stacklevel=3,
        )
