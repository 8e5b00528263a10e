"""Image and text generation: janus_like's engine against transformers' Janus on identical weights.

A random transformers `JanusForConditionalGeneration` is built at each size and converted; both
generate the same number of images for the same prompt with the same CFG scale, sampling on, and
the script prints both times and the ratio. Text generation is compared in tokens/s (greedy).
Codes only on both sides (transformers' image mode returns codes; VQ decoding is timed apart).

    python benchmarks/generate.py                            # CPU: tiny and ~100M
    python benchmarks/generate.py --device cuda --sizes 1b   # GPU: Janus-Pro-1B shapes, bf16, 16 images

On CUDA it first checks correctness (greedy codes and text against transformers; the compiled
step against eager) and reports the memory-bandwidth floor of image generation. In bf16, greedy
codes of random weights drift apart after a near-tie; `--dtype float32` makes the checks exact.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from janus_like.checkpoint.options import device_argument
from janus_like.configuration import JanusLikeConfig
from janus_like.generation import GenerationEngine, GenerationSettings, Request
from janus_like.processor import JanusLikeProcessor
from janus_like.testing import byte_level_tokenizer, tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the transformers reference lives there
from hf_reference import hf_generate_images, hf_to_janus_like, random_hf_janus  # noqa: E402

PROMPT = "a red circle on the left of a blue square, studio photo"
SIZES = {
    # name: (text_config, vision_config, vq_config, gen_image_size, num_images)
    "tiny": (dict(), dict(), dict(), 16, 4),
    "100m": (
        dict(
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=12,
        ),
        dict(image_size=128, patch_size=16),
        dict(
            base_channels=32,
            channel_multiplier=[1, 1, 1, 1, 1],
            num_res_blocks=1,
            norm_num_groups=8,
            z_channels=32,
            codebook_size=16384,
        ),
        128,
        4,
    ),
    # Janus-Pro-1B decoder and heads; the SigLIP tower (unused by text-to-image) is cut to one layer
    "1b": (
        dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
            vocab_size=102400,
            max_position_embeddings=16384,
            rms_norm_eps=1e-6,
        ),
        dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=1,
            num_attention_heads=16,
            image_size=384,
            patch_size=16,
        ),
        dict(
            base_channels=128,
            channel_multiplier=[1, 1, 2, 2, 4],
            num_res_blocks=2,
            norm_num_groups=32,
            z_channels=256,
            codebook_size=16384,
            codebook_dim=8,
        ),
        384,
        16,
    ),
}
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}  # bytes/s (SXM parts)


def config_for(size: str) -> tuple[JanusLikeConfig, JanusLikeProcessor, int]:
    """The config of a benchmark size, its processor and how many images it draws."""
    text, vision, vq, gen_size, num_images = SIZES[size]
    tokenizer = byte_level_tokenizer()
    config = tiny_config(
        len(tokenizer),
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        gen_head_hidden_size=text.get("hidden_size", 64),
        gen_image_size=gen_size,
    )
    processor = JanusLikeProcessor(tokenizer, config)
    processor.fill_token_ids(config)
    return config, processor, num_images


def build(size: str, device: str, dtype: torch.dtype):
    config, processor, num_images = config_for(size)
    with torch.device(device):
        # tiny: wider weights, or the codes are nearly constant; larger: transformers' init (std 0.02)
        hf = random_hf_janus(config, seed=0, std=0.2 if size == "tiny" else None, dtype=dtype)
        ours = hf_to_janus_like(hf, config)
    return hf, ours, processor, num_images


def timed(fns, device: str, repeat: int = 1):
    """Best wall time of each function over `repeat` rounds (the functions alternate within a
    round, so both sides see the same machine load), and each one's last result."""
    best, out = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out[i] = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            best[i] = min(best[i], time.perf_counter() - start)
    return best, out


def ours_images(engine, prompt, n, cfg, temperature, seed=0):
    results = engine.generate(
        [Request(prompt, "image")] * n, GenerationSettings(temperature=temperature, cfg_scale=cfg, seed=seed)
    )
    return torch.stack([r.codes[0] for r in results])


def bandwidth_floor(model, processor, n_images: int, prompt_len: int, device_name: str) -> tuple[float, str]:
    """Seconds to read the decoder + gen head weights and the KV cache once per code."""
    bw = next((v for k, v in BANDWIDTH.items() if k in device_name), 2.0e12)
    decoder = model.decoder
    weights = sum(p.numel() * p.element_size() for n, p in decoder.named_parameters() if "embed_tokens" not in n)
    weights += sum(p.numel() * p.element_size() for p in model.gen_head.parameters())
    weights += sum(p.numel() * p.element_size() for p in model.gen_aligner.parameters())
    text = model.config.text_config
    n_codes = processor.num_gen_tokens
    per_token_kv = (
        2 * text.num_hidden_layers * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
    )
    mean_len = prompt_len + n_codes / 2
    kv = 2 * n_images * per_token_kv * mean_len * next(model.parameters()).element_size()
    return n_codes * (weights + kv) / bw, f"{bw / 1e12:.2f} TB/s"


def check(hf, ours, processor, n_images: int, cfg: float, device: str) -> GenerationEngine:
    """Greedy parity with transformers and compiled-vs-eager agreement, as printed lines; returns
    the compiled engine (already compiled and captured)."""
    prompt = processor.generation_prompt(PROMPT)
    ids = torch.tensor([prompt.ids], device=device)
    chat = processor.conversation([{"role": "user", "content": "Describe the picture."}])
    chat_ids = torch.tensor([chat.ids], device=device)
    ref_text = hf.generate(
        input_ids=chat_ids,
        attention_mask=torch.ones_like(chat_ids),
        max_new_tokens=32,
        do_sample=False,
        pad_token_id=processor.pad_id,
    )[0, len(chat) :].tolist()
    eager = GenerationEngine(ours, processor, decode=False)
    our_text = eager.generate([Request(chat)], GenerationSettings(temperature=0, max_new_tokens=32))[0].token_ids
    same = sum(a == b for a, b in zip(ref_text, our_text))
    dtype = str(next(ours.parameters()).dtype).replace("torch.", "")
    print(
        f"CHECK greedy text vs transformers ({dtype}, 32 tokens): {same}/{len(our_text)} equal "
        f"-> {'PASS' if our_text == ref_text[: len(our_text)] else 'DIFF'}"
    )
    start = time.perf_counter()
    ref = hf_generate_images(hf, ids, processor, n_images, cfg, do_sample=False)[0].cpu()
    hf_greedy = time.perf_counter() - start
    codes = ours_images(eager, prompt, n_images, cfg, 0.0)
    prefix = int((codes[0] != ref).nonzero()[0]) if not torch.equal(codes[0], ref) else len(ref)
    drift = "PASS" if prefix == len(ref) else "DIFF (rounding: random weights give near-ties)"
    print(
        f"CHECK greedy image codes vs transformers ({dtype}, CFG {cfg}): first {prefix}/{len(ref)} codes equal, "
        f"{int((codes[0] == ref).sum())} equal overall -> {drift}"
        f"  [transformers greedy {hf_greedy:.1f}s]"
    )
    compiled = GenerationEngine(ours, processor, compile=True, decode=False)
    start = time.perf_counter()
    compiled_codes = ours_images(compiled, prompt, n_images, cfg, 0.0)
    print(f"compile + first compiled run: {time.perf_counter() - start:.1f}s")
    prefix = int((compiled_codes[0] != codes[0]).nonzero()[0]) if not torch.equal(compiled_codes, codes) else len(ref)
    print(
        f"CHECK compiled vs eager greedy codes: first {prefix}/{len(ref)} equal, rows identical: "
        f"{bool((compiled_codes == compiled_codes[0]).all())} -> "
        f"{'PASS' if prefix == len(ref) else 'DIFF (inductor rounds differently; exact in float32, see tests)'}"
    )
    return compiled


def bench_size(
    size: str, device: str, dtype: torch.dtype, cfg: float, repeat: int, text_tokens: int, compile: bool, checks: bool
) -> None:
    hf, ours, processor, n_images = build(size, device, dtype)
    n_params = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith(("vq.", "vision_model.")))
    print(
        f"\n== {size}: {n_params / 1e6:.1f}M parameters (decoder + heads), {processor.num_gen_tokens} codes/image, "
        f"{n_images} images, CFG {cfg}, {dtype}, {device}"
    )
    prompt = processor.generation_prompt(PROMPT)
    ids = torch.tensor([prompt.ids], device=device)
    engine = GenerationEngine(ours, processor, decode=False)
    compiled = check(hf, ours, processor, n_images, cfg, device) if checks else None
    if compile and compiled is None:
        compiled = GenerationEngine(ours, processor, compile=True, decode=False)
    if compiled is not None:  # compile and capture the sampling graph (greedy checks built another)
        start = time.perf_counter()
        ours_images(compiled, prompt, n_images, cfg, 1.0)
        print(f"compile + first compiled sampling run: {time.perf_counter() - start:.1f}s")
    if not checks:  # warm-up (allocator, kernels; the checks above did it already), then timed runs
        hf_generate_images(hf, ids, processor, n_images, cfg, do_sample=True)
        ours_images(engine, prompt, n_images, cfg, 1.0)
    runs = [
        lambda: hf_generate_images(hf, ids, processor, n_images, cfg, do_sample=True),
        lambda: ours_images(engine, prompt, n_images, cfg, 1.0),
    ]
    if compiled is not None:
        runs.append(lambda: ours_images(compiled, prompt, n_images, cfg, 1.0))
    times, _ = timed(runs, device, repeat)
    t_hf, t_ours = times[:2]
    print(f"images  transformers {t_hf:.3f}s | janus_like eager {t_ours:.3f}s | speed-up {t_hf / t_ours:.2f}x")
    if compiled is not None:
        t_comp = times[2]
        print(f"images  janus_like compiled {t_comp:.3f}s | speed-up vs transformers {t_hf / t_comp:.2f}x")
    if device == "cuda":
        name = torch.cuda.get_device_name()
        floor, bw = bandwidth_floor(ours, processor, n_images, len(prompt), name)
        best = min(t_ours, t_comp) if compiled is not None else t_ours
        print(
            f"floor   {floor:.3f}s at {bw} ({name}) | janus_like best / floor {best / floor:.2f}x | "
            f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        )
    codes = torch.randint(0, ours.config.vq_config.codebook_size, (n_images, processor.num_gen_tokens), device=device)
    (t_vq,), _ = timed([lambda: torch.cat([ours.vq.decode(c) for c in codes.split(8)])], device)
    print(f"vq      decoding {n_images} images (not in the times above): {t_vq:.3f}s")

    chat = processor.conversation([{"role": "user", "content": "Tell me about circles."}])
    chat_ids = torch.tensor([chat.ids], device=device)
    settings = GenerationSettings(temperature=0, max_new_tokens=text_tokens, ignore_eos=True)
    hf_text = lambda: hf.generate(
        input_ids=chat_ids,
        attention_mask=torch.ones_like(chat_ids),
        do_sample=False,
        max_new_tokens=text_tokens,
        min_new_tokens=text_tokens,
        pad_token_id=processor.pad_id,
    )
    ours_text = lambda: engine.generate([Request(chat)], settings)[0].token_ids
    hf_text()
    ours_text()
    (t_hf, t_ours), (out_hf, out_ours) = timed([hf_text, ours_text], device, repeat)
    n_hf, n_ours = out_hf.shape[1] - len(chat), len(out_ours)
    print(
        f"text    transformers {n_hf / t_hf:.1f} tok/s | janus_like {n_ours / t_ours:.1f} tok/s | "
        f"speed-up {(n_ours / t_ours) / (n_hf / t_hf):.2f}x  ({n_ours} greedy tokens)"
    )
    if compiled is not None:
        compiled_text = lambda: compiled.generate([Request(chat)], settings)[0].token_ids
        start = time.perf_counter()
        compiled_text()
        print(f"compile + first compiled text run: {time.perf_counter() - start:.1f}s")
        (t_comp,), (out_comp,) = timed([compiled_text], device, repeat)
        print(
            f"text    janus_like compiled {len(out_comp) / t_comp:.1f} tok/s | speed-up vs transformers "
            f"{(len(out_comp) / t_comp) / (n_hf / t_hf):.2f}x | same tokens as eager: {out_comp == out_ours}"
        )


def guidance_scale(text: str) -> float:
    value = float(text)
    if not 1 < value <= 1000:
        raise argparse.ArgumentTypeError(f"{text} is out of range; accepted: above 1 up to 1000 (both sides guide)")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", type=device_argument)
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    parser.add_argument(
        "--cfg-scale",
        type=guidance_scale,
        default=5.0,
        help="above 1 (transformers' guidance processor refuses 1 and below)",
    )
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="default: bfloat16 on CUDA, float32 on CPU; float32 on CUDA makes the greedy checks exact",
    )
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per side (best is kept)")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: OpenMP threads stall badly on a shared, loaded machine)"
    )
    parser.add_argument("--compile", action="store_true", help="also time the compiled decode step")
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="correctness checks first (default: on CUDA only)",
    )
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    sizes = args.sizes or (["1b"] if cuda else ["tiny", "100m"])
    dtype = getattr(torch, args.dtype) if args.dtype else torch.bfloat16 if cuda else torch.float32
    if not cuda:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if cuda else f", {torch.get_num_threads()} threads")
    )
    for size in sizes:
        repeat = args.repeat or (10 if size == "tiny" else 1 if cuda else 2)
        bench_size(
            size,
            "cuda" if cuda else "cpu",
            dtype,
            args.cfg_scale,
            repeat,
            args.text_tokens,
            compile=args.compile or cuda,
            checks=cuda if args.check is None else args.check,
        )


if __name__ == "__main__":
    with torch.inference_mode():
        main()
