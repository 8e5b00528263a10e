"""Peak memory of one training step: task-masked, gather-first loss vs all-positions logits.

The naive way runs lm_head (text vocabulary) and gen_head (codebook) over every position and
masks afterwards: batch × seq × (vocab + codebook) fp32 logits plus their gradients. janus_like
gathers the target positions first, runs each head only on its own targets, and chunks the
cross-entropy so at most 2048 × vocab logits exist at a time.

Each variant runs in a fresh process; peak_memory.measure_peak records the step's peak above the
level just before it (resident set on CPU, torch.cuda.max_memory_allocated on CUDA).

    python benchmarks/loss_memory.py [--vocab 32000] [--seq 1024] [--batch 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from peak_memory import measure_peak

from janus_like.checkpoint.options import device_argument


def run_variant(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from janus_like.layout import GEN_IMAGE, IGNORE_INDEX, TEXT
    from janus_like.testing import tiny_model

    torch.manual_seed(0)
    model, _ = tiny_model(
        text_config=dict(
            vocab_size=args.vocab, hidden_size=256, intermediate_size=512, max_position_embeddings=args.seq + 8
        ),
        vq_config=dict(codebook_size=16384),
        gen_head_hidden_size=256,
    )
    model.to(args.device).train()
    # A realistic mixed batch: half generation rows (576 image codes as targets after a prompt),
    # half text rows whose last quarter is the trained answer.
    b, n = args.batch, args.seq
    input_ids = torch.randint(0, args.vocab, (b, n), device=args.device)
    modality = torch.full((b, n), TEXT, device=args.device)
    labels = torch.full((b, n), IGNORE_INDEX, device=args.device)
    for row in range(b):
        if row % 2 == 0:
            modality[row, n - 577 : n - 1] = GEN_IMAGE
            input_ids[row, n - 577 : n - 1] %= 16384
            labels[row, n - 577 : n - 1] = input_ids[row, n - 577 : n - 1]
        else:
            labels[row, 3 * n // 4 :] = input_ids[row, 3 * n // 4 :]

    def naive_loss():
        hidden = model(input_ids=input_ids, modality=modality).last_hidden_state[:, :-1]
        t, m = labels[:, 1:], modality[:, 1:]
        text_t = torch.where(m == TEXT, t, IGNORE_INDEX)
        image_t = torch.where(m == GEN_IMAGE, t, IGNORE_INDEX)
        text_ce = F.cross_entropy(model.text_logits(hidden).float().flatten(0, 1), text_t.flatten(), reduction="sum")
        image_ce = F.cross_entropy(model.image_logits(hidden).float().flatten(0, 1), image_t.flatten(), reduction="sum")
        return (text_ce + image_ce) / (t != IGNORE_INDEX).sum()

    def ours_loss():
        return model(input_ids=input_ids, modality=modality, labels=labels).loss

    step = {"naive": naive_loss, "ours": ours_loss}[args.variant]

    def step_and_backward():
        loss = step()
        loss.backward()
        return loss

    loss, extra, seconds = measure_peak(step_and_backward, args.device)
    return {"variant": args.variant, "extra_mib": extra / 2**20, "seconds": seconds, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu", type=device_argument)
    parser.add_argument("--variant", choices=["naive", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in ("naive", "ours"):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--vocab",
            str(args.vocab),
            "--seq",
            str(args.seq),
            "--batch",
            str(args.batch),
            "--device",
            args.device,
        ]
        results[variant] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
    naive, ours = results["naive"], results["ours"]
    print(
        f"training-step peak memory above the model, batch {args.batch} x {args.seq} tokens, "
        f"text vocab {args.vocab}, codebook 16384, {args.device}"
    )
    print(f"  all-positions logits : {naive['extra_mib']:8.1f} MiB  {naive['seconds']:.2f} s  loss {naive['loss']:.4f}")
    print(f"  janus_like (gathered): {ours['extra_mib']:8.1f} MiB  {ours['seconds']:.2f} s  loss {ours['loss']:.4f}")
    print(f"  memory ratio naive/ours: {naive['extra_mib'] / max(ours['extra_mib'], 1e-6):.1f}x")


if __name__ == "__main__":
    main()
