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
    python apps/default_model/build.py --resume   # after an interruption: keeps finished steps, continues training
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
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

from janus_like import JanusLikeForConditionalGeneration
from janus_like.fileio import write_json
from janus_like.hardware import cpu_multiplies
from janus_like.training import checkpoints

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "janus_like" / "default_model"
LATER_STAGES = ("tune", "read")  # recipe sections; each trains the previous result on its own fresh records


def run(cmd: list[str], log: Path, mode: str = "w") -> str:
    """Run a step as its own process (stderr, the progress bars, goes to `log`; mode "a" adds to it); its stdout."""
    print("$", " ".join(cmd), flush=True)
    with log.open(mode) as err:
        out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    print(out.stdout, end="", flush=True)
    if out.returncode != 0:
        sys.exit(f"build: step failed ({out.returncode}); see {log}")
    return out.stdout


class Steps:
    """The build's ledger, WORK/steps.json: each step's settings (a hash that includes the steps it
    builds on) and its numbers. With `resume`, a finished step whose settings and output are unchanged
    is kept, and a training stage that was stopped continues from its checkpoint: a build of hours on a
    slow CPU (docs/default-model.md) survives an interruption. Without it every step runs afresh."""

    def __init__(self, work: Path, resume: bool):
        self.file, self.resume = work / "steps.json", resume
        self.entries = json.loads(self.file.read_text()) if resume and self.file.exists() else {}
        self.kept: list[str] = []

    def key(self, name: str) -> str:
        return self.entries[name]["key"]

    def run(self, name: str, settings: dict, output: Path, make: Callable[[bool], dict | None]) -> dict:
        """`make(started_before)`'s numbers and time, or the earlier run's where this step is kept."""
        key = sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        earlier = self.entries.get(name, {})
        same = self.resume and earlier.get("key") == key
        if same and earlier.get("result") is not None and output.exists():
            print(f"{name}: kept from an earlier run with the same settings", flush=True)
            self.kept.append(name)
            return earlier["result"]
        self._record(name, key, None)  # started: a resumed build may continue what this leaves behind
        started = time.perf_counter()
        result = dict(make(same) or {}, seconds=round(time.perf_counter() - started))
        self._record(name, key, result)
        return result

    def _record(self, name: str, key: str, result: dict | None) -> None:
        self.entries[name] = {"key": key, "result": result}
        write_json(self.file, self.entries, indent=2)


def write_data(data: Path, size: int, seed: int, spec: dict) -> None:
    """The shapes world's training records under `data`; `spec` holds counts and optional view and question settings."""
    sys.path.insert(0, str(ROOT / "configs"))
    from shapes_data import write_shapes

    shutil.rmtree(data, ignore_errors=True)
    options = {key: tuple(spec[key]) for key in ("view_sizes", "smoothing") if key in spec}
    if "describe_share" in spec:
        options["describe_share"] = spec["describe_share"]
    write_shapes(data, size=size, seed=seed, counts=spec["counts"], **options)


def train_vq(work: Path, recipe: dict, images: Path) -> float:
    """The VQ on the renders, into WORK/vq/model; its reconstructions' PSNR in dB."""
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
    return float(re.search(r"PSNR [-\d.]+ -> ([-\d.]+) dB", out).group(1))


def train_text_tokenizer(work: Path, recipe: dict, data: Path) -> None:
    """A byte-level BPE on the records' text, into WORK/text_tokenizer."""
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


def compose(work: Path, recipe: dict, vq: Path, text_tokenizer: Path) -> None:
    """A fresh Llama and SigLIP saved as parts, joined with the trained VQ by from_parts, into WORK/init."""
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


def merged(base: dict, override: dict) -> dict:
    """`base` with each section of `override` laid over the same section; values inside a section are
    replaced whole (a tune's `data.mix` must not inherit tasks its data has none of)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def train(work: Path, name: str, settings: dict, init: Path, data: Path, resume: bool = False) -> dict:
    """`janus-like train` from `init` on `data` into WORK/NAME (final/ holds the result); its last losses.
    With `resume`, a run stopped midway continues from its latest checkpoint (the trainer resumes exactly)."""
    config = dict(
        settings,
        output_dir=str(work / name),
        model=dict(settings.get("model", {}), path=str(init)),
        data=dict(settings["data"], files=[str(data / "train.jsonl")]),
    )
    config_file = work / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "janus_like.cli", "train", str(config_file)]
    continuing = resume and checkpoints.latest(work / name / "checkpoints") is not None
    if not continuing:
        shutil.rmtree(work / name, ignore_errors=True)
    run(cmd + ["--resume"] * continuing, work / f"{name}.log", mode="a" if continuing else "w")
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


def stage_one(work: Path, recipe: dict, steps: Steps) -> tuple[str, dict]:
    """Steps 1-5: data, VQ, text tokenizer, composition, training; the ledger key of the trained model
    (WORK/train/final) and its numbers."""
    size, seed = recipe["data"]["image_size"], recipe["seed"]
    data, vq, text_tokenizer, init = work / "data", work / "vq" / "model", work / "text_tokenizer", work / "init"
    records = steps.run(
        "data", {"seed": seed, "data": recipe["data"]}, data / "train.jsonl",
        lambda _: write_data(data, size, seed, recipe["data"]),
    )  # fmt: skip
    coded = steps.run(
        "vq", {"data": steps.key("data"), "vq": recipe["vq"], "seed": seed, "size": size}, vq,
        lambda _: {"psnr_db": train_vq(work, recipe, data / "renders")},
    )  # fmt: skip
    steps.run(
        "text_tokenizer", {"data": steps.key("data"), "tokenizer": recipe["text_tokenizer"]}, text_tokenizer,
        lambda _: train_text_tokenizer(work, recipe, data),
    )  # fmt: skip
    parts = {"vq": steps.key("vq"), "text_tokenizer": steps.key("text_tokenizer")}
    steps.run("init", {**parts, "model": recipe["model"], "seed": seed, "size": size}, init,
              lambda _: compose(work, recipe, vq, text_tokenizer))  # fmt: skip
    trained = steps.run(
        "train", {"init": steps.key("init"), "data": steps.key("data"), "train": recipe["train"]},
        work / "train" / "final",
        lambda started_before: {"losses": train(work, "train", recipe["train"], init, data, started_before)},
    )  # fmt: skip
    report = {
        "vq_psnr_db": coded["psnr_db"],
        "vq_seconds": records["seconds"] + coded["seconds"],  # the records' and the VQ's, as builds have reported
        "final_losses_last50": trained["losses"],
        "train_seconds": trained["seconds"],
    }
    return steps.key("train"), report


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
    p.add_argument(
        "--resume", action="store_true", help="keep the steps an earlier build in WORK finished with the same "
        "settings (WORK/steps.json) and continue a stopped training stage from its checkpoint",
    )  # fmt: skip
    args = p.parse_args(argv)
    recipe = yaml.safe_load(Path(args.recipe).read_text())
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    ran_on = machine()
    print(f"machine: {ran_on}", flush=True)
    steps, stages = Steps(work, args.resume), LATER_STAGES
    if args.tuned:  # stage 1 and the tune each reproduce bit for bit: iterate on the read stage
        final, stages = Path(args.tuned).resolve(), ("read",)
        previous, report = str(final), {"tuned": str(final), "tuned_build": earlier_report(final)}
    elif args.stage1:  # stage 1 is seeded and reproduces bit for bit (docs/default-model.md): iterate on the rest
        final = Path(args.stage1).resolve()
        previous, report = str(final), {"stage1": str(final), "stage1_build": earlier_report(final)}
    else:
        (previous, report), final = stage_one(work, recipe, steps), work / "train" / "final"
    size = recipe["data"]["image_size"]
    for name in stages:
        spec, data = recipe[name], work / f"{name}_data"
        settings = merged(recipe["train"], spec["train"])
        written = steps.run(
            f"{name}_data", {"data": spec["data"], "size": size}, data / "train.jsonl",
            lambda _, spec=spec, data=data: write_data(data, size, spec["data"]["seed"], spec["data"]),
        )  # fmt: skip
        result = steps.run(
            name, {"from": previous, "data": steps.key(f"{name}_data"), "train": settings}, work / name / "final",
            lambda started_before, name=name, settings=settings, init=final, data=data: {
                "losses": train(work, name, settings, init, data, started_before)
            },
        )  # fmt: skip
        report[f"{name}_losses_last50"] = result["losses"]
        report[f"{name}_seconds"] = written["seconds"] + result["seconds"]
        previous, final = steps.key(name), work / name / "final"
    report["total_seconds"] = round(time.perf_counter() - started)
    if steps.kept:  # total_seconds is this run's; each step's own time is in WORK/steps.json
        report["kept_from_earlier_run"] = steps.kept
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
