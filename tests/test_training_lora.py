"""LoRA fine-tuning (config section `lora`): only adapters (and what the stage adds) train, the
adapted weights stay bit-identical, `final/` holds merged plain weights that reproduce the adapted
model, and a resumed LoRA run continues exactly."""

from __future__ import annotations

import pytest
import torch
from test_training import reset_accelerate, run, write_dataset

from janus_like import JanusLikeForConditionalGeneration, SettingsError
from janus_like.testing import tiny_model
from janus_like.training.config import config_from_dict
from janus_like.training.lora import merged_state_dict

LORA = {"r": 8, "alpha": 16.0}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate()


def _outputs(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        return model.text_logits(out.last_hidden_state), model.image_logits(out.last_hidden_state)


def test_lora_trains_only_adapters_and_final_holds_the_merged_model(tmp_path, records):
    write_dataset(tmp_path)
    before = tiny_model(seed=0)[0].state_dict()
    # adapters on every Linear layer (decoder, heads, aligners): the loss falls as in full training
    trainer, state = run(tmp_path, lora=dict(LORA, targets=["*"]), optimizer={"lr": 1e-2}, training={"max_steps": 40})
    losses = [h["loss"] for h in state.history]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    assert trainer.trainable_names and all(".lora_" in n for n in trainer.trainable_names)
    adapted = trainer.accelerator.unwrap_model(trainer.model)
    for name, tensor in adapted.state_dict().items():
        if ".lora_" not in name:  # every weight without an adapter, and every adapted weight, untouched
            assert torch.equal(tensor, before[name.replace(".base_layer.", ".")]), name

    final = JanusLikeForConditionalGeneration.from_pretrained(tmp_path / "out" / "final")
    assert set(final.state_dict()) == set(before)
    q = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(final.state_dict()[q], before[q])  # the adapter was folded in
    batch = trainer.processor(records[:3])
    batch.pop("gen_pixel_values")
    for got, want in zip(_outputs(final, batch), _outputs(adapted, batch)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_lora_with_stage_one_also_trains_the_generation_glue(tmp_path):
    write_dataset(tmp_path)
    trainer, _ = run(
        tmp_path,
        stage=1,
        lora=dict(LORA, targets=["language_model.*.self_attn.*_proj"]),
        model={"tiny": True, "dtype": "bfloat16"},
        training={"max_steps": 2},
    )
    params = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    q = "language_model.model.layers.0.self_attn.q_proj"
    assert params[f"{q}.base_layer.weight"].dtype == torch.bfloat16  # the model stays in bf16,
    assert params[f"{q}.lora_A.default.weight"].dtype == torch.float32  # its adapters train in fp32
    groups = {n.split(".")[0] for n in trainer.trainable_names}
    assert groups == {"aligner", "gen_embed", "gen_aligner", "gen_head", "language_model"}
    language = [n for n in trainer.trainable_names if n.startswith("language_model")]
    assert language and all(".self_attn." in n and ".lora_" in n for n in language)


def test_resumed_lora_run_continues_exactly(tmp_path):
    write_dataset(tmp_path)
    _, whole = run(
        tmp_path / "whole",
        lora=LORA,
        data={"files": [str(tmp_path / "train.jsonl")]},
        training={"max_steps": 6},
        logging={"save_every": 3, "tensorboard": False},
    )
    reset_accelerate()
    run(
        tmp_path / "cut",
        lora=LORA,
        data={"files": [str(tmp_path / "train.jsonl")]},
        training={"max_steps": 3},
        logging={"save_every": 3, "tensorboard": False},
    )
    reset_accelerate()
    _, resumed = run(
        tmp_path / "cut",
        resume="latest",
        lora=LORA,
        data={"files": [str(tmp_path / "train.jsonl")]},
        training={"max_steps": 6},
        logging={"save_every": 3, "tensorboard": False},
    )
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-6)


def test_merge_is_w_plus_scale_b_a():
    w, a, b = torch.randn(6, 5), torch.randn(2, 5), torch.randn(6, 2)
    merged = merged_state_dict(
        {
            "x.base_layer.weight": w,
            "x.base_layer.bias": torch.ones(6),
            "x.lora_A.default.weight": a,
            "x.lora_B.default.weight": b,
            "y.weight": w,
        },
        {"x": 0.5},
    )
    assert set(merged) == {"x.weight", "x.bias", "y.weight"}
    torch.testing.assert_close(merged["x.weight"], w + 0.5 * b @ a)


@pytest.mark.parametrize(
    "lora, message",
    [
        ({"r": -1}, "lora.r = -1 is out of range"),
        ({"r": 4, "dropout": 1.0}, "lora.dropout = 1.0 is out of range"),
        ({"r": 4, "rank": 2}, "unknown config key 'lora.rank'"),
    ],
)
def test_bad_lora_settings_name_the_key(lora, message):
    from test_training import base_config

    with pytest.raises(SettingsError) as err:
        config_from_dict(base_config(lora=lora))
    assert message in str(err.value)


def test_lora_targets_that_match_nothing_are_refused(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(SettingsError, match="lora.targets .* match no Linear layer"):
        run(tmp_path, lora={"r": 4, "targets": ["language_model.*.no_such_proj"]})
