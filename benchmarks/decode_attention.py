"""Decode-step attention at Janus-Pro-1B's drawing shapes: which kernel reads the KV cache fastest.

One query per slot against a static cache (32 slots = 16 images + their CFG twins, 16 heads of 128,
prompt + 576 columns), a mask that allows each slot a contiguous range of columns. Prints each
candidate's time per layer and the bandwidth it reaches over the whole cache ("flex all columns"
attends every column, hence its error; "flex used columns" skips the unused blocks).

    python benchmarks/decode_attention.py [--no-kernels] [--profile-engine]   # CUDA only
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SLOTS, HEADS, DIM, PROMPT, CODES = 32, 16, 128, 83, 576


def candidates(q, k, v, mask, allowed_to):
    """name -> zero-argument callable computing the attention output."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    scale = 1 / math.sqrt(DIM)

    def with_backend(backend):
        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

        return run

    def manual(q, k, v, mask):
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale + mask
        return torch.matmul(scores.softmax(-1).to(v.dtype), v)

    compiled_manual = torch.compile(manual, fullgraph=True, dynamic=False)
    math_sdpa = torch.compile(
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale),
        fullgraph=True,
        dynamic=False,
    )
    flex = torch.compile(flex_attention, fullgraph=True, dynamic=False)

    def flex_blocks(limit):
        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx < limit[b]

        return create_block_mask(mask_mod, SLOTS, None, 1, k.shape[2], device=q.device)

    full_blocks, used_blocks = flex_blocks(torch.full_like(allowed_to, k.shape[2])), flex_blocks(allowed_to)
    out = {
        "sdpa default": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale),
        "sdpa efficient": with_backend(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa cudnn": with_backend(SDPBackend.CUDNN_ATTENTION),
        "manual eager": lambda: manual(q, k, v, mask),
        "manual compiled": lambda: compiled_manual(q, k, v, mask),
        "inductor sdpa math": lambda: _math(math_sdpa, q, k, v, mask),
        "flex all columns": lambda: flex(q, k, v, block_mask=full_blocks, scale=scale),
        "flex used columns": lambda: flex(q, k, v, block_mask=used_blocks, scale=scale),
        "flex block mask build": lambda: flex_blocks(allowed_to),
    }
    return out


def _math(fn, *args):
    with sdpa_kernel(SDPBackend.MATH):
        return fn(*args)


def attention_table() -> None:
    from triton.testing import do_bench

    torch.manual_seed(0)
    columns = PROMPT + CODES - 1
    q = torch.randn(SLOTS, HEADS, 1, DIM, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(SLOTS, HEADS, columns, DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    used = PROMPT + CODES // 2  # the mean fill over a drawing
    allowed_to = torch.full((SLOTS,), used, device="cuda", dtype=torch.int32)
    mask = torch.full((SLOTS, 1, 1, columns), float("-inf"), device="cuda", dtype=torch.bfloat16)
    mask[..., :used] = 0
    reference = F.scaled_dot_product_attention(q, k[:, :, :used], v[:, :, :used])
    kv_bytes = 2 * k.numel() * k.element_size()
    print(f"K+V per layer {kv_bytes / 2**20:.0f} MiB ({columns} columns; {used} used)")
    for name, fn in candidates(q, k, v, mask, allowed_to).items():
        try:
            result = fn()
            ms = do_bench(fn, warmup=25, rep=200)
            if "build" in name:
                print(f"  {name:<28} {ms * 1e3:8.1f} us")
                continue
            print(
                f"  {name:<28} {ms * 1e3:8.1f} us/layer  {kv_bytes / ms / 1e9:6.2f} TB/s of the full cache"
                f"  x24 layers {ms * 24:.2f} ms  max err {float((result - reference).abs().max()):.3g}"
            )
        except Exception as exc:  # one failing candidate must not hide the others
            print(f"  {name:<28} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")


def profile_engine() -> None:
    """Top kernels of the compiled drawing loop (16 images, CFG) on a random 1B model."""
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from generate import PROMPT as TEXT
    from generate import config_for

    from janus_like.generation import GenerationEngine, GenerationSettings, Request
    from janus_like.modeling import JanusLikeForConditionalGeneration

    config, processor, n = config_for("1b")
    with torch.device("cuda"):
        model = JanusLikeForConditionalGeneration(config).to(torch.bfloat16).eval()
    engine = GenerationEngine(model, processor, compile=True, decode=False)
    request = [Request(processor.generation_prompt(TEXT), "image")] * n
    settings = GenerationSettings(temperature=1.0, cfg_scale=5.0, seed=0)
    for _ in range(2):
        engine.generate(request, settings)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        engine.generate(request, settings)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=90))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    engine.generate(request, settings)
    end.record()
    torch.cuda.synchronize()
    print(f"compiled drawing of {n} images: {start.elapsed_time(end):.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kernels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the attention kernels at decode shapes",
    )
    parser.add_argument("--profile-engine", action="store_true", help="profile a compiled drawing of 16 images")
    args = parser.parse_args()
    with torch.inference_mode():
        if args.kernels:
            attention_table()
        if args.profile_engine:
            profile_engine()
