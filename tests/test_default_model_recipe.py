"""The default model's build recipe: every stage is a valid `janus-like train` config on its own records."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from janus_like import JanusLikeForConditionalGeneration
from janus_like.checkpoint import DEFAULT_MODEL_DIR
from janus_like.training.config import config_from_dict
from janus_like.training.stages import apply_stage

BUILD = Path(__file__).resolve().parents[1] / "apps" / "default_model"


def _build_module():
    spec = importlib.util.spec_from_file_location("default_model_build", BUILD / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _build_module()
RECIPE = yaml.safe_load((BUILD / "recipe.yaml").read_text())


def _stage_config(name: str):
    """`janus-like train`'s config for a stage: "train" (stage 1) or a later stage merged over it."""
    settings = build.merged(RECIPE["train"], RECIPE[name]["train"] if name != "train" else {})
    return config_from_dict(
        dict(settings, output_dir="unused", model={"path": "unused"}, data=dict(settings["data"], files=["x.jsonl"]))
    )


@pytest.mark.parametrize("name", build.LATER_STAGES)
def test_each_later_stage_is_a_valid_train_config_with_its_own_data_seed(name):
    config = _stage_config(name)
    assert config.training.max_steps == RECIPE[name]["train"]["training"]["max_steps"]
    assert config.data.mix == RECIPE[name]["train"]["data"]["mix"]  # replaced whole, not merged with stage 1's
    mixed = {task for task, weight in config.data.mix.items() if weight > 0}
    written = {task for task, count in RECIPE[name]["data"]["counts"].items() if count > 0}
    assert mixed <= written, f"{name}: the mix asks for tasks its records do not hold"
    seeds = [RECIPE["seed"]] + [RECIPE[stage]["data"]["seed"] for stage in build.LATER_STAGES]
    assert len(set(seeds)) == len(seeds), "a later stage would train on stage 1's (or another stage's) records again"


@pytest.mark.parametrize("name", ("train",) + build.LATER_STAGES)
def test_every_stage_trains_in_float32_on_a_cpu_without_bf16_matmuls(name, monkeypatch):
    """bf16 autocast on an AVX2-only CPU made a stage-1 step 26.1 s instead of 1.72 (docs/training.md)."""
    from janus_like.training import precision

    config = _stage_config(name)
    for native, chosen in ((False, "no"), (True, "bf16")):
        monkeypatch.setattr(precision, "cpu_multiplies", lambda dtype, native=native: native)
        assert precision.resolve(config.training.mixed_precision, on_cpu=True) == chosen


def test_the_read_stage_trains_the_vision_tower_and_aligner_alone():
    config = _stage_config("read")
    model = JanusLikeForConditionalGeneration.from_pretrained(DEFAULT_MODEL_DIR)
    trained = apply_stage(model, config.stage, config.trainable, config.frozen)
    assert {name.split(".")[0] for name in trained} == {"vision_model", "aligner"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(("language_model.", "gen_")))


def test_build_keeps_the_recipes_model_settings_beside_the_init_path(tmp_path, monkeypatch):
    written = {}

    def record(cmd, log, mode="w"):  # the `janus-like train` call: what config it would run
        written.update(yaml.safe_load(Path(cmd[-1]).read_text()))
        (tmp_path / "train").mkdir(exist_ok=True)
        (tmp_path / "train" / "metrics.json").write_text('{"history": [{"loss": 1.0}]}')

    monkeypatch.setattr(build, "run", record)
    build.train(tmp_path, "train", RECIPE["train"], tmp_path / "init", tmp_path / "data")
    assert written["model"] == {**RECIPE["train"].get("model", {}), "path": str(tmp_path / "init")}
    assert config_from_dict(written).model.attn_implementation == RECIPE["train"]["model"]["attn_implementation"]


def test_the_vq_is_trained_with_the_recipes_codebook_settings(tmp_path, monkeypatch):
    """Codebook size, merging and the dead-code share reach train_vq.py: the dead-code share decides
    how many codes the world's patches get (docs/default-model.md, the twelfth build)."""
    called = []
    monkeypatch.setattr(build, "run", lambda cmd, log: called.append(cmd) or "PSNR 6.0 -> 40.0 dB")
    build.train_vq(tmp_path, RECIPE, tmp_path / "renders")
    args = dict(zip(called[0], called[0][1:]))
    vq = RECIPE["vq"]
    assert args["--codebook-size"] == str(vq["codebook_size"]) and args["--merge-codes"] == str(vq["merge_codes"])
    assert args["--dead-code-threshold"] == str(vq["dead_code_threshold"])


def _tiny_recipe() -> dict:
    """The recipe's shape at toy size: every step of a build in about a minute."""
    recipe = yaml.safe_load((BUILD / "recipe.yaml").read_text())
    few = {"generation": 6, "edit": 3, "understanding": 6, "interleaved": 2, "text": 2}
    recipe["data"]["counts"] = few
    recipe["vq"].update(steps=2, batch_size=4)
    recipe["model"]["text"].update(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
    )
    recipe["model"]["vision"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    recipe["model"]["gen_head_hidden_size"] = 32
    recipe["train"]["training"].update(max_steps=2, batch_size=2)
    recipe["train"]["data"]["row_length"] = 1024
    for stage in build.LATER_STAGES:
        recipe[stage]["data"]["counts"] = dict(few, text=0)
        recipe[stage]["train"]["training"] = {"max_steps": 3}
        recipe[stage]["train"]["logging"] = {"save_every": 2, "keep": 2}
    return recipe


def _weights(final: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(final / "model.safetensors")


@pytest.mark.slow
def test_a_build_stopped_midway_resumes_to_the_same_weights_and_redoes_only_what_changed(tmp_path, capsys):
    """A build of hours on a slow CPU must survive an interruption: `--resume` keeps the finished steps
    and continues the stopped stage from its checkpoint, ending where the uninterrupted build ends."""
    recipe_file, work = tmp_path / "recipe.yaml", tmp_path / "work"
    recipe = _tiny_recipe()
    recipe_file.write_text(yaml.safe_dump(recipe))
    args = ["--work", str(work), "--recipe", str(recipe_file), "--no-install"]
    build.main(args)
    whole = {stage: _weights(work / stage / "final") for stage in ("tune", "read")}

    # what a build killed between the tune's steps 2 and 3 leaves: its step-2 checkpoint, no final, no read stage
    ledger = json.loads((work / "steps.json").read_text())
    ledger["tune"]["result"] = None
    del ledger["read_data"], ledger["read"]
    (work / "steps.json").write_text(json.dumps(ledger))
    for gone in ("tune/final", "tune/checkpoints/step-00000003", "read", "read_data"):
        shutil.rmtree(work / gone)
    capsys.readouterr()
    report = build.main(args + ["--resume"])
    assert report["kept_from_earlier_run"] == ["data", "vq", "text_tokenizer", "init", "train", "tune_data"]
    assert f"{work / 'tune.yaml'} --resume" in capsys.readouterr().out  # continued, not started over
    for stage, weights in whole.items():
        resumed = _weights(work / stage / "final")
        assert all(torch.equal(resumed[name], weights[name]) for name in weights), f"{stage} differs after resume"

    # a changed setting redoes its step and those after it, nothing before
    recipe["read"]["train"]["optimizer"]["lr"] = 1.0e-3
    recipe_file.write_text(yaml.safe_dump(recipe))
    report = build.main(args + ["--resume"])
    assert report["kept_from_earlier_run"] == ["data", "vq", "text_tokenizer", "init", "train", "tune_data", "tune",
                                               "read_data"]  # fmt: skip
    aligner = "aligner.layers.0.weight"
    assert not torch.equal(_weights(work / "read" / "final")[aligner], whole["read"][aligner])
