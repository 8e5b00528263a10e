"""The default model's build recipe: every stage is a valid `janus-like train` config on its own records."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
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

    def record(cmd, log):  # the `janus-like train` call: what config it would run
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
