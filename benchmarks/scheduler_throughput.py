"""Continuous batching: 16 concurrent text-to-image calls through the scheduler against the same 16
one at a time, in images/s, on the embedded default model and on a ~100M-parameter random model.

    python benchmarks/scheduler_throughput.py                  # CPU: default and 100m
    python benchmarks/scheduler_throughput.py --sizes default --clients 16

Every call draws 1 image with guidance (2 cache rows), sampled (temperature 1, its own seed), and
decodes it with the VQ decoder. "one at a time" is what the demo and a plain loop did before the
scheduler: each call runs alone from prefill to its image.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import PROMPT, config_for  # the benchmark sizes of benchmarks/generate.py

from janus_like import JanusLikePipeline
from janus_like.checkpoint.options import device_argument
from janus_like.modeling import JanusLikeForConditionalGeneration


def build(size: str, device: str, max_batch: int) -> JanusLikePipeline:
    """The embedded default model, or a random model of a benchmarks/generate.py size."""
    if size == "default":
        return JanusLikePipeline.from_pretrained(device=device, dtype="float32", max_batch=max_batch)
    config, processor, _ = config_for(size)
    torch.manual_seed(0)
    with torch.device(device):
        model = JanusLikeForConditionalGeneration(config).eval()
    return JanusLikePipeline(model, processor, max_batch=max_batch)


def draw(pipe: JanusLikePipeline, i: int) -> None:
    pipe.generate_images(f"{PROMPT} {i}", num_images=1, temperature=1.0, seed=i)


def images_per_second(pipe: JanusLikePipeline, clients: int, concurrent: bool) -> float:
    start = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda i: draw(pipe, i), range(clients)))
    else:
        for i in range(clients):
            draw(pipe, i)
    return clients / (time.perf_counter() - start)


def bench(size: str, device: str, clients: int) -> None:
    pipe = build(size, device, max_batch=2 * clients)
    params = sum(p.numel() for p in pipe.model.parameters())
    draw(pipe, 0)  # warm-up: allocates the cache, loads kernels
    alone = images_per_second(pipe, clients, concurrent=False)
    together = images_per_second(pipe, clients, concurrent=True)
    print(
        f"{size}: {params / 1e6:.1f}M parameters, {pipe.processor.num_gen_tokens} codes/image, "
        f"cfg {pipe.default_cfg_scale}; {clients} calls: one at a time {alone:.2f} images/s, "
        f"concurrent {together:.2f} images/s, ratio {together / alone:.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["default", "100m"], choices=["default", "tiny", "100m", "1b"])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--device", type=device_argument, default="cpu")
    args = parser.parse_args()
    for size in args.sizes:
        bench(size, args.device, args.clients)


if __name__ == "__main__":
    main()
