"""Build the embedded default model (janus_like/default_model/) from nothing, on a CPU, seeded.

1. write the shapes world's training combinations as JSONL (configs/shapes_data.py; held-out
   combinations never appear);
2. train the VQ image tokenizer on its renders (tokenizers/train_vq.py --tiny, 8x downsampling);
3. train a byte-level BPE text tokenizer on its text (tokenizers/train_text.py);
4. compose a small Llama + tiny SigLIP + that VQ and tokenizer (from_parts);
5. train the whole model (VQ frozen) with `janus-like train` on the task mixture;
6. tune it (`janus-like train` again, short, lower learning rate) on fresh records weighted to
   edits and conversations, with some draw-and-describe requests and wider-varied views (recipe `tune`);
7. train the vision tower and aligner alone on many fresh, varied views (recipe `read`): the
   decoder and the drawing parts stay bit for bit, and pictures from other renderers read right;
8. copy the result into janus_like/default_model/ and run ShapesEval on it.

    python apps/default_model/build.py [--work runs/default_model] [--recipe apps/default_model/recipe.yaml]
    python apps/default_model/build.py --stage1 runs/default_model/train/final --work runs/tune2   # later stages only
    python apps/default_model/build.py --tuned runs/default_model/tune/final --work runs/read2   # the read stage alone

Sizes and step counts live in recipe.yaml; the numbers of the run go to build_report.json
(in WORK and beside the installed weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

from janus_like import JanusLikeForConditionalGeneration
from janus_like.hardware import cpu_multiplies

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "janus_like" / "default_model"
LATER_STAGES = ("tune", "read")  # recipe sections; each trains the previous result on its own fresh records


def run(cmd: list[str], log: Path) -> str:
    """Run a step as its own process (stderr, the progress bars, goes to `log`); its stdout."""
    print("$", " ".join(cmd), flush=True)
    with log.open("w") as err:
        out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    print(out.stdout, end="", flush=True)
    if out.returncode != 0:
        sys.exit(f"build: step failed ({out.returncode}); see {log}")
    return out.stdout


def write_data(data: Path, size: int, seed: int, spec: dict) -> Path:
    """The shapes world's training records under `data`; `spec` holds counts and optional view and question settings."""
    sys.path.insert(0, str(ROOT / "configs"))
    from shapes_data import write_shapes

    shutil.rmtree(data, ignore_errors=True)
    options = {key: tuple(spec[key]) for key in ("view_sizes", "smoothing") if key in spec}
    if "describe_share" in spec:
        options["describe_share"] = spec["describe_share"]
    write_shapes(data, size=size, seed=seed, counts=spec["counts"], **options)
    return data


def train_vq(work: Path, recipe: dict, images: Path) -> tuple[Path, float]:
    vq = recipe["vq"]
    out = run(
        [
            sys.executable,
            "tokenizers/train_vq.py",
            "--tiny",
            "--images",
            str(images),
            "--out",
            str(work / "vq"),
            "--image-size",
            str(recipe["data"]["image_size"]),
            "--codebook-size",
            str(vq["codebook_size"]),
            "--codebook-dim",
            str(vq["codebook_dim"]),
            "--channel-multiplier",
            ",".join(map(str, vq["channel_multiplier"])),
            *(["--patch-encoder"] if vq.get("patch_encoder") else []),
            *(["--merge-codes", str(vq["merge_codes"])] if vq.get("merge_codes") else []),
            *(["--dead-code-threshold", str(vq["dead_code_threshold"])] if "dead_code_threshold" in vq else []),
            "--steps",
            str(vq["steps"]),
            "--batch-size",
            str(vq["batch_size"]),
            "--eval-images",
            "1000",
            "--seed",
            str(recipe["seed"]),
            "--device",
            "cpu",
        ],
        work / "vq.log",
    )
    psnr = float(re.search(r"PSNR [-\d.]+ -> ([-\d.]+) dB", out).group(1))
    return work / "vq" / "model", psnr


def train_text_tokenizer(work: Path, recipe: dict, data: Path) -> Path:
    out = work / "text_tokenizer"
    run(
        [
            sys.executable,
            "tokenizers/train_text.py",
            "--files",
            str(data / "train.jsonl"),
            "--vocab-size",
            str(recipe["text_tokenizer"]["vocab_size"]),
            "--out",
            str(out),
        ],
        work / "text_tokenizer.log",
    )
    return out


def compose(work: Path, recipe: dict, vq: Path, text_tokenizer: Path) -> Path:
    """A fresh Llama and SigLIP saved as parts, joined with the trained VQ by from_parts."""
    torch.manual_seed(recipe["seed"])
    m = recipe["model"]
    tokenizer = AutoTokenizer.from_pretrained(text_tokenizer)
    llm = LlamaForCausalLM(
        LlamaConfig(
            **m["text"],
            vocab_size=len(tokenizer),
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    llm.save_pretrained(work / "llm")
    tokenizer.save_pretrained(work / "llm")
    SiglipVisionModel(SiglipVisionConfig(**m["vision"], hidden_act="gelu", vision_use_head=False)).save_pretrained(
        work / "vision"
    )
    model, processor = JanusLikeForConditionalGeneration.from_parts(
        work / "llm",
        work / "vision",
        vq,
        return_processor=True,
        gen_image_size=recipe["data"]["image_size"],
        gen_head_hidden_size=m["gen_head_hidden_size"],
        default_cfg_scale=m["default_cfg_scale"],
        default_cfg_plausibility=m["default_cfg_plausibility"],
        system_prompt="",
    )
    init = work / "init"
    model.save_pretrained(init)
    processor.save_pretrained(init)
    return init


def merged(base: dict, override: dict) -> dict:
    """`base` with each section of `override` laid over the same section; values inside a section are
    replaced whole (a tune's `data.mix` must not inherit tasks its data has none of)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def train(work: Path, name: str, settings: dict, init: Path, data: Path) -> dict:
    """`janus-like train` from `init` on `data` into WORK/NAME (final/ holds the result); its last losses."""
    config = dict(
        settings,
        output_dir=str(work / name),
        model=dict(settings.get("model", {}), path=str(init)),
        data=dict(settings["data"], files=[str(data / "train.jsonl")]),
    )
    config_file = work / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.rmtree(work / name, ignore_errors=True)
    run([sys.executable, "-m", "janus_like.cli", "train", str(config_file)], work / f"{name}.log")
    history = json.loads((work / name / "metrics.json").read_text())["history"]
    last = history[-50:]

    def mean(key: str) -> float:
        values = [h[key] for h in last if h.get(key) is not None]
        return sum(values) / max(len(values), 1)

    return {"loss": mean("loss"), "text_loss": mean("text_loss"), "image_loss": mean("image_loss")}


def machine() -> dict:
    """What the build ran on: its time depends on the CPU as much as on the recipe (docs/default-model.md)."""
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else []
    return {"cpu": names[0] if names else platform.processor(), "cores": os.cpu_count(),
            "bf16_matmul": cpu_multiplies(torch.bfloat16)}  # fmt: skip


def install(final: Path) -> float:
    """Replace janus_like/default_model/ by the trained model (temp dir, then rename); its size in MB."""
    tmp = TARGET.with_name(".tmp-default_model")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(final, tmp)
    shutil.rmtree(TARGET, ignore_errors=True)
    tmp.rename(TARGET)
    return sum(f.stat().st_size for f in TARGET.iterdir()) / 1e6


def stage_one(work: Path, recipe: dict) -> tuple[Path, dict]:
    """Steps 1-5: data, VQ, text tokenizer, composition, training; the trained model and its numbers."""
    started = time.perf_counter()
    data = write_data(work / "data", recipe["data"]["image_size"], recipe["seed"], recipe["data"])
    vq, psnr = train_vq(work, recipe, data / "renders")
    vq_seconds = time.perf_counter() - started
    text_tokenizer = train_text_tokenizer(work, recipe, data)
    init = compose(work, recipe, vq, text_tokenizer)
    losses = train(work, "train", recipe["train"], init, data)
    report = {"vq_psnr_db": psnr, "vq_seconds": round(vq_seconds), "final_losses_last50": losses}
    return work / "train" / "final", report


def earlier_report(final: Path) -> dict | None:
    """The build report of the build whose WORK/STAGE/final this is (None if it has none)."""
    earlier = final.parents[1] / "build_report.json"
    return json.loads(earlier.read_text()) if earlier.exists() else None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(ROOT / "runs" / "default_model"), help="scratch folder for every step")
    p.add_argument("--recipe", default=str(Path(__file__).with_name("recipe.yaml")))
    p.add_argument("--no-install", action="store_true", help="leave janus_like/default_model/ as it is")
    p.add_argument(
        "--stage1", help="WORK/train/final of an earlier build with this stage-1 recipe: only the later stages"
    )
    p.add_argument("--tuned", help="WORK/tune/final of an earlier build with this recipe: only the read stage")
    args = p.parse_args(argv)
    recipe = yaml.safe_load(Path(args.recipe).read_text())
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    ran_on = machine()
    print(f"machine: {ran_on}", flush=True)
    stages = LATER_STAGES
    if args.tuned:  # stage 1 and the tune each reproduce bit for bit: iterate on the read stage
        final, stages = Path(args.tuned).resolve(), ("read",)
        report = {"tuned": str(final), "tuned_build": earlier_report(final)}
    elif args.stage1:  # stage 1 is seeded and reproduces bit for bit (docs/default-model.md): iterate on the rest
        final = Path(args.stage1).resolve()
        report = {"stage1": str(final), "stage1_build": earlier_report(final)}
    else:
        final, report = stage_one(work, recipe)
    for name in stages:
        stage_started, spec = time.perf_counter(), recipe[name]
        data = write_data(work / f"{name}_data", recipe["data"]["image_size"], spec["data"]["seed"], spec["data"])
        report[f"{name}_losses_last50"] = train(work, name, merged(recipe["train"], spec["train"]), final, data)
        final = work / name / "final"
        report[f"{name}_seconds"] = round(time.perf_counter() - stage_started)
    report["total_seconds"] = round(time.perf_counter() - started)
    report["machine"] = ran_on
    if not args.no_install:
        report["size_mb"] = round(install(final), 2)
        run(
            [sys.executable, "-m", "janus_like.cli", "eval", "shapes", "--out", str(work / "eval_shapes")],
            work / "eval.log",
        )
    text = json.dumps(report, indent=2) + "\n"
    (work / "build_report.json").write_text(text)
    if not args.no_install:
        (TARGET / "build_report.json").write_text(text)  # provenance shipped beside the weights
    print(text, end="")
    return report


if __name__ == "__main__":
    main()
