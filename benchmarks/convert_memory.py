"""Peak memory of converting a DeepSeek checkpoint: load-everything vs janus_like's streaming convert.

Writes a Janus-Pro-1B-sized DeepSeek-layout checkpoint (their exact key names and shapes, from
tests/reference_janus.py on the meta device; bf16, two `.bin` shards + index like Janus-Pro-7B),
then, each in a fresh process, measures the peak anonymous resident memory (RssAnon, sampled;
memory-mapped file pages are excluded because the kernel can drop them at will) of:

  naive      torch.load every shard fully into one state dict (what a simple converter does)
  streaming  `janus_like.convert.convert`, shards of at most 2 GiB

Streaming stays near one output shard whatever the model size, which is why a 7B (14 GiB bf16)
converts in 24 GiB of RAM; naive needs the whole checkpoint at least once.

    python benchmarks/convert_memory.py [--workdir /tmp/janus-convert-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, not an installed copy
PRO_1B = {
    "aligner_config": {
        "cls": "MlpProjector",
        "params": {"depth": 2, "input_dim": 1024, "n_embed": 2048, "projector_type": "mlp_gelu"},
    },
    "gen_aligner_config": {
        "cls": "MlpProjector",
        "params": {"depth": 2, "input_dim": 8, "n_embed": 2048, "projector_type": "mlp_gelu"},
    },
    "gen_head_config": {
        "cls": "vision_head",
        "params": {"image_token_embed": 2048, "image_token_size": 16384, "n_embed": 2048},
    },
    "gen_vision_config": {"cls": "VQ-16", "params": {"image_token_size": 16384, "n_embed": 8}},
    "language_config": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "max_position_embeddings": 16384,
        "model_type": "llama",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "num_key_value_heads": 16,
        "torch_dtype": "bfloat16",
        "vocab_size": 102400,
    },
    "model_type": "multi_modality",
    "torch_dtype": "bfloat16",
    "vision_config": {
        "cls": "CLIPVisionTower",
        "params": {
            "image_size": 384,
            "model_name": "siglip_large_patch16_384",
            "select_feature": "same",
            "select_layer": -1,
        },
    },
}


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def write_checkpoint(path: Path) -> int:
    """Janus-Pro-1B's tensors under DeepSeek's names, random bf16, in two .bin shards; returns bytes."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import reference_janus as ref

    from janus_like.testing import byte_level_tokenizer

    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in ref.MultiModalityCausalLM(PRO_1B).state_dict().items()}
    path.mkdir(parents=True)
    keys, total = list(shapes), 0
    files = {f"pytorch_model-{i + 1:05d}-of-00002.bin": keys[i::2] for i in range(2)}
    for file, part in files.items():
        shard = {}
        for k in part:
            shape, dtype = shapes[k]
            shard[k] = (torch.randn(shape) * 0.02).to(torch.bfloat16 if dtype.is_floating_point else dtype)
            total += shard[k].numel() * shard[k].element_size()
        torch.save(shard, path / file)
        del shard
    (path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": {k: f for f, ks in files.items() for k in ks}})
    )
    (path / "config.json").write_text(json.dumps(PRO_1B))
    tokenizer = byte_level_tokenizer()
    tokenizer.add_tokens(["<|User|>", "<|Assistant|>"], special_tokens=True)
    tokenizer.save_pretrained(path)
    return total


def run_variant(variant: str, src: Path, dst: Path) -> dict:
    import torch

    peak, stop = [rss_anon()], threading.Event()
    base = peak[0]

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    if variant == "naive":
        state = {}
        for file in sorted(src.glob("pytorch_model-*.bin")):
            state.update(torch.load(file, map_location="cpu", weights_only=True))
        peak[0] = max(peak[0], rss_anon())
    else:
        from janus_like.convert import convert

        convert(src, dst)
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    return {"peak_bytes": peak[0] - base, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/janus-convert-bench")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.workdir)
    src, dst = work / "Janus-Pro-1B-random", work / "converted"
    if args.variant:
        print(json.dumps(run_variant(args.variant, src, dst)))
        return
    shutil.rmtree(work, ignore_errors=True)
    print("writing a Janus-Pro-1B-sized DeepSeek checkpoint ...", flush=True)
    total = write_checkpoint(src)
    results = {}
    for variant in ("naive", "streaming"):
        out = subprocess.run(
            [sys.executable, __file__, "--workdir", str(work), "--variant", variant],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 2**30
    print(f"checkpoint: {total / gib:.2f} GiB bf16 (Janus-Pro-1B shapes, DeepSeek layout, 2 .bin shards)")
    what = {"naive": "to load only", "streaming": "to convert and write"}
    for variant, r in results.items():
        print(
            f"{variant:>10}: peak anonymous memory {r['peak_bytes'] / gib:6.2f} GiB   {r['seconds']:6.1f} s "
            f"{what[variant]}"
        )
    ratio = results["naive"]["peak_bytes"] / max(results["streaming"]["peak_bytes"], 1)
    print(f"streaming uses {ratio:.1f}x less memory than loading the whole checkpoint")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
