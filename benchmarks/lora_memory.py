"""Training memory: full fine-tuning against LoRA on the same ~220M-parameter decoder.

Three ways to train one model: stage 2 (every weight but SigLIP and the VQ), LoRA adapters on the
decoder's projections alone, and LoRA plus stage 1's glue (aligners, gen embedding, gen head) as
in configs/lora.yaml. Each runs in a fresh process: AdamW, two training steps on the same mixed
batch. Counted exactly, not sampled (the CPU allocator's resident set is too noisy to compare):
the gradients and AdamW state of the trainable weights, and the activations autograd keeps for
the backward pass (unique storages, the weights themselves excluded). On CUDA the allocator's
peak above the loaded model is printed too (peak_memory.measure_peak).

    python benchmarks/lora_memory.py [--device cpu] [--rank 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from peak_memory import measure_peak

from janus_like.checkpoint.options import device_argument

VARIANTS = ("full", "lora", "lora+glue")


def run_variant(args: argparse.Namespace) -> dict:
    import torch

    from janus_like.testing import shape_image, tiny_model
    from janus_like.training.config import LoraSettings
    from janus_like.training.lora import add_adapters
    from janus_like.training.stages import apply_stage

    torch.manual_seed(0)
    model, processor = tiny_model(
        text_config=dict(
            vocab_size=32000,
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=12,
            num_attention_heads=16,
            num_key_value_heads=16,
            max_position_embeddings=1024,
        ),
        vq_config=dict(codebook_size=16384),
        gen_head_hidden_size=1024,
    )
    model.to(args.device)
    if args.variant == "full":
        apply_stage(model, 2)
    else:
        add_adapters(model, LoraSettings(r=args.rank, alpha=2.0 * args.rank))
        apply_stage(model, 1 if args.variant == "lora+glue" else None, adapters=True)
    model.train()
    model.vq.eval()
    batch = processor(
        [
            {"task": "generation", "prompt": "a red circle on the left", "image": shape_image()},
            {"task": "text", "text": "plain text for language retention " * 8},
        ]
        * args.batch
    )
    batch = {k: v.to(args.device) for k, v in batch.items()}  # the VQ encodes the images on the model's device
    ids, labels = model.fill_gen_codes(
        batch["input_ids"], batch["modality"], batch["labels"], batch.pop("gen_pixel_values")
    )
    batch.update(input_ids=ids, labels=labels)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor):  # autograd's saved tensors: their storages, counted once
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def two_steps():
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        losses = []
        for _ in range(2):
            saved.clear()
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
        return losses

    losses, peak, seconds = measure_peak(two_steps, args.device)
    state = sum(p.numel() * (p.element_size() + 8) for p in params)  # gradient + AdamW's two fp32 moments
    return {
        "variant": args.variant,
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in model.parameters()),
        "state_mib": state / 2**20,
        "activations_mib": sum(saved.values()) / 2**20,
        "peak_mib": peak / 2**20,
        "seconds": seconds / 2,
        "losses": losses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", type=device_argument)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2, help="generation + text sample pairs per batch")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--device",
            args.device,
            "--rank",
            str(args.rank),
            "--batch",
            str(args.batch),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:  # show the variant's own error, not just its exit status
            sys.exit(f"variant {variant} failed:\n{done.stderr}")
        out = done.stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    full = results["full"]
    total = {v: r["state_mib"] + r["activations_mib"] for v, r in results.items()}
    print(
        f"training memory beyond the weights ({full['total'] / 1e6:.0f}M parameters, fp32, AdamW, "
        f"{2 * args.batch} samples, LoRA rank {args.rank}, {args.device})"
    )
    for variant, r in results.items():
        saving = "" if variant == "full" else f" ({total['full'] / total[variant]:.1f}x less than full)"
        cuda = f"  allocator peak {r['peak_mib']:7.1f} MiB" if args.device.startswith("cuda") else ""
        print(
            f"  {variant:<10} trainable {r['trainable'] / 1e6:7.2f}M ({r['trainable'] / r['total']:6.2%})  "
            f"grads+AdamW {r['state_mib']:7.1f} MiB  activations {r['activations_mib']:7.1f} MiB  "
            f"total {total[variant]:7.1f} MiB{saving}{cuda}  {r['seconds']:.2f} s/step"
        )


if __name__ == "__main__":
    main()
