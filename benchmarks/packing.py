"""Real-token training throughput: padded batches vs packed rows, over the same variable-length samples.

Padding wastes compute on pad positions: a batch of samples of very different lengths costs
batch × longest. Packing puts several samples end to end in rows of at most --max-length tokens
(attention kept inside each sample), so almost every computed position is a real token. Both
variants train on exactly the same samples, in the same order of batches; the losses agree.

    python benchmarks/packing.py [--steps 6] [--batch-size 16] [--max-length 1024] [--device cpu]

Prints real tokens/s of each, the ratio, and writes benchmarks/packing.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from janus_like.checkpoint.options import device_argument
from janus_like.testing import shape_image, tiny_model
from janus_like.training.packing import collate_packed, collate_padded

WORDS = "the a red blue green circle square left right center shape image small large of on is and".split()


def variable_length_records(n: int, max_chars: int, seed: int = 0) -> list[dict]:
    """Mostly text with long-tailed lengths (as SFT/caption data is) plus some generation samples."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        if i % 5 == 0:
            records.append(
                {
                    "task": "generation",
                    "prompt": " ".join(rng.choice(WORDS, 6)),
                    "image": shape_image(size=32, color=str(rng.choice(["red", "blue", "green"]))),
                }
            )
        else:
            chars = int(min(max_chars, rng.lognormal(np.log(120), 0.9)))
            text = " ".join(rng.choice(WORDS, max(1, chars // 5)))[:chars]
            records.append({"task": "text", "text": text})
    return records


def train_step(model, optimizer, batch: dict, device: str) -> tuple[float, float]:
    """One forward/backward/step: (seconds, loss)."""
    inputs = {k: v.to(device) for k, v in batch.items()}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model(**inputs)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out.loss.item()


def run(model, variants: dict[str, list[tuple[dict, int]]], device: str) -> dict[str, tuple[float, float, list[float]]]:
    """Alternate the variants step by step (so machine load drifts hit both alike); per variant:
    (real tokens/s, computed positions/s, losses). The first step of each warms up and is not timed."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)  # lr 0: same weights
    totals = {name: [0.0, 0, 0, []] for name in variants}
    steps = len(next(iter(variants.values())))
    for i in range(steps):
        for name, batches in variants.items():
            batch, n_real = batches[i]
            seconds, loss = train_step(model, optimizer, batch, device)
            t = totals[name]
            t[3].append(loss)
            if i > 0:
                t[0] += seconds
                t[1] += n_real
                t[2] += batch["input_ids"].numel()
    return {name: (t[1] / t[0], t[2] / t[0], t[3]) for name, t in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16, help="samples per step")
    parser.add_argument("--max-length", type=int, default=1024, help="packed row length (and longest sample)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_argument)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".png")))
    args = parser.parse_args()

    torch.manual_seed(0)
    model, processor = tiny_model(
        text_config=dict(
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=args.max_length,
        ),
        gen_head_hidden_size=args.hidden,
    )
    model.to(device=args.device, dtype=getattr(torch, args.dtype)).train()
    records = variable_length_records(args.steps * args.batch_size, max_chars=args.max_length - 16)
    seqs = [processor.record_to_sequence(r) for r in records]
    groups = [seqs[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.steps)]
    n_real = [sum(len(s) for s in g) for g in groups]
    padded = [(collate_padded(processor, g), n) for g, n in zip(groups, n_real)]
    packed = [(collate_packed(processor, g, args.max_length), n) for g, n in zip(groups, n_real)]

    results = run(model, {"padded": padded, "packed": packed}, args.device)
    pad_frac = {
        name: 1 - sum(n_real) / sum(b["input_ids"].numel() for b, _ in batches)
        for name, batches in (("padded", padded), ("packed", packed))
    }

    print(
        f"device {args.device}, {args.dtype}, {args.steps} steps × {args.batch_size} samples, "
        f"lengths {min(map(len, seqs))}..{max(map(len, seqs))} tokens (mean {np.mean(list(map(len, seqs))):.0f}), "
        f"model hidden {args.hidden} × {args.layers} layers"
    )
    print(f"{'variant':8} {'rows×len (step 1)':>18} {'padding':>8} {'real tok/s':>11} {'computed pos/s':>15}")
    for name, batches in (("padded", padded), ("packed", packed)):
        shape = "×".join(map(str, batches[0][0]["input_ids"].shape))
        real, computed, _ = results[name]
        print(f"{name:8} {shape:>18} {pad_frac[name]:8.1%} {real:11.0f} {computed:15.0f}")
    ratio = results["packed"][0] / results["padded"][0]
    loss_diff = max(abs(a - b) for a, b in zip(results["padded"][2], results["packed"][2]))
    print(f"packed / padded real-token throughput: {ratio:.2f}x  (max |loss difference| {loss_diff:.2e})")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    bars = ax.bar(["padded", "packed"], [results["padded"][0], results["packed"][0]], color=["#999", "#2a7"])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("real tokens / s (train step)")
    ax.set_title(f"packing: {ratio:.2f}x on {args.device}")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
