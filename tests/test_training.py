"""Training (issue 5): config checks, loss falls, stage freezing, packing, checkpoints, bad data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from janus_like import CheckpointError, DataError, JanusLikeForConditionalGeneration, SettingsError
from janus_like.testing import reset_accelerate, shape_image, tiny_model
from janus_like.training import checkpoints
from janus_like.training.config import config_from_dict, load_config
from janus_like.training.packing import collate_packed, collate_padded, first_fit_decreasing
from janus_like.training.stages import apply_stage

SHAPES = [
    (s, c, p) for s in ("circle", "square") for c in ("red", "blue", "green") for p in ("left", "center", "right")
]


def write_dataset(root: Path, name: str = "train.jsonl") -> Path:
    """A small mixed dataset: generation, understanding, interleaved and text records about coloured shapes."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (shape, color, pos) in enumerate(SHAPES):
        image = f"imgs/{i}.png"
        shape_image(shape, color, size=32, position=pos).save(root / image)
        lines.append({"task": "generation", "prompt": f"a {color} {shape} on the {pos}", "image": image})
        lines.append(
            {
                "task": "understanding",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is this?"}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": f"A {color} {shape}."}]},
                ],
            }
        )
        lines.append({"task": "text", "text": f"The {color} {shape} is on the {pos}."})
        if i % 3 == 0:
            lines.append(
                {
                    "task": "interleaved",
                    "segments": [
                        {"type": "text", "text": f"A {color} {shape}:"},
                        {"type": "image", "image": image},
                        {"type": "text", "text": f"it is on the {pos}."},
                    ],
                }
            )
    path = root / name
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def base_config(**sections) -> dict:
    config = {
        "output_dir": "out",
        "seed": 0,
        "model": {"tiny": True},
        "data": {
            "files": ["train.jsonl"],
            "max_length": 256,
            "cfg_dropout": 0.1,
            "mix": {"generation": 0.35, "understanding": 0.35, "interleaved": 0.1, "text": 0.2},
        },
        "optimizer": {"lr": 3e-3},
        "schedule": {"name": "constant_with_warmup", "warmup_steps": 2},
        "training": {"max_steps": 6, "batch_size": 4},
        "logging": {"every": 2, "save_every": 3, "tensorboard": False},
    }
    for key, value in sections.items():
        merge = isinstance(value, dict) and isinstance(config.get(key), dict)
        config[key] = {**config[key], **value} if merge else value
    return config


def write_config(root: Path, **sections) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(**sections)))
    return path


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate()


def run(root: Path, resume: str | None = None, skip_bad: bool = False, **sections):
    from janus_like.training.trainer import Trainer

    config = load_config(write_config(root, **sections))
    trainer = Trainer(config, resume=resume, skip_bad_records=skip_bad)
    return trainer, trainer.fit()


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "change, message",
    [
        ({"trainig": {}}, "unknown config key 'trainig' (did you mean training?)"),
        ({"training": {"batch_sise": 2}}, "training.batch_sise"),
        ({"training": {"max_steps": 0}}, "training.max_steps = 0 is out of range"),
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr must be float"),
        ({"optimizer": {"betas": [0.9, 1.5]}}, "optimizer.betas"),
        ({"data": {"mix": {"video": 1.0}}}, "unknown task 'video'"),
        ({"data": {"cfg_dropout": 1.5}}, "data.cfg_dropout = 1.5 is out of range"),
        ({"data": {"cfg_image_dropout": -0.1}}, "data.cfg_image_dropout = -0.1 is out of range"),
        ({"data": {"max_length": 256, "row_length": 128}}, "data.row_length = 128 is out of range; accepted: [256,"),
        ({"training": {"mixed_precision": "fp8"}}, "choose one of auto, no, bf16, fp16"),
        ({"stage": 4}, "stage = 4"),
        ({"model": {"tiny": True, "path": "x"}}, "exactly one of"),
        ({"model": {"tiny": True, "compose": {"gen_image_size": 64}}}, "model.compose applies to model.parts"),
        (
            {"model": {"tiny": False, "parts": {"llm": "a", "vision": "b"}, "compose": {"gen_image_sise": 64}}},
            "gen_image_sise",
        ),
        ({"seed": -1}, "seed = -1 is out of range; accepted: [0, 4294967295]"),
        ({"seed": 2**40}, "seed = 1099511627776 is out of range"),
        ({"model": {"tiny": True, "tiny_seed": -1}}, "model.tiny_seed = -1 is out of range"),
        # NaN fails every comparison and infinity has no upper bound: both must be refused where a float is read
        ({"optimizer": {"lr": float("nan")}}, "optimizer.lr = nan is not accepted; give a finite number"),
        ({"training": {"grad_clip": float("nan")}}, "training.grad_clip = nan is not accepted"),
        ({"data": {"mix": {"text": float("inf"), "generation": 1.0}}}, "data.mix.text = inf is not accepted"),
        ({"data": {"mix": {"text": float("nan"), "generation": 1.0}}}, "data.mix.text = nan is not accepted"),
        ({"optimizer": {"betas": [0.9, float("inf")]}}, "optimizer.betas[1] = inf is not accepted"),
        ({"optimizer": {"lr": "1e-4"}}, "optimizer.lr must be float, got '1e-4'; write 1.0e-4"),
    ],
)
def test_bad_config_names_the_key(change, message):
    with pytest.raises(SettingsError, match=None) as err:
        config_from_dict(base_config(**change))
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (b"model:\n  tiny: true\n\tdata: x\n", "config.yaml:3:1: not valid YAML: found character '\\t'"),
        (b"\xff\xfe\x00model: 1", "config.yaml is not UTF-8 text"),
    ],
)
def test_unreadable_config_is_one_line(tmp_path, text, message):
    (tmp_path / "config.yaml").write_bytes(text)
    with pytest.raises(SettingsError) as err:
        load_config(tmp_path / "config.yaml")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_config_paths_are_relative_to_the_config_file(tmp_path):
    config = load_config(write_config(tmp_path))
    assert config.resolve(config.output_dir) == tmp_path.resolve() / "out"
    assert config.training.batch_size == 4 and config.optimizer.betas == [0.9, 0.95]


# ---------------------------------------------------------------------------- training


def test_bad_eval_records_are_named_like_training_ones(tmp_path):
    """An eval record with a missing image stops the run with file:line (it was dropped silently, and
    an eval set of bad records reported a loss of 0)."""
    write_dataset(tmp_path)
    (tmp_path / "eval.jsonl").write_text(
        json.dumps({"task": "generation", "prompt": "a circle", "image": "imgs/missing.png"}) + "\n"
    )
    settings = dict(training={"max_steps": 2}, eval={"files": ["eval.jsonl"], "every": 1, "batches": 1})
    with pytest.raises(DataError, match="bad record at .*eval.jsonl:1: .*missing.png"):
        run(tmp_path, **settings)
    reset_accelerate()
    with pytest.raises(DataError, match="eval: the first 1 eval micro-batches hold no target tokens"):
        run(tmp_path, skip_bad=True, output_dir="skipping", **settings)


def test_loss_falls_on_a_small_mixed_dataset(tmp_path):
    write_dataset(tmp_path)
    write_dataset(tmp_path, "eval.jsonl")
    trainer, state = run(
        tmp_path,
        training={"max_steps": 40},
        logging={"save_every": 40, "tensorboard": True},
        eval={"files": ["eval.jsonl"], "every": 20, "batches": 2},
    )
    losses = [h["loss"] for h in state.history]
    assert len(losses) == 40 and all(map(torch.isfinite, torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert state.eval_history[-1]["loss"] < state.eval_history[0]["loss"]
    assert all(h["tokens_per_s"] > 0 for h in state.history)
    out = tmp_path / "out"
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["loss"] for h in metrics["history"]] == losses
    # the final model loads as a normal model directory
    from janus_like import JanusLikeForConditionalGeneration

    reloaded = JanusLikeForConditionalGeneration.from_pretrained(out / "final")
    trained = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert torch.equal(reloaded.state_dict()["gen_head.vision_head.weight"], trained["gen_head.vision_head.weight"])
    assert (out / "final" / "model.safetensors").stat().st_mode & 0o044  # readable by others (safetensors: 0600)


def test_gradient_accumulation_equals_a_bigger_batch(tmp_path):
    write_dataset(tmp_path)
    _, big = run(
        tmp_path / "big", training={"batch_size": 4, "max_steps": 3}, data={"files": [str(tmp_path / "train.jsonl")]}
    )
    _, accum = run(
        tmp_path / "accum",
        training={"batch_size": 2, "grad_accum": 2, "max_steps": 3},
        data={"files": [str(tmp_path / "train.jsonl")]},
    )
    # the same 4 samples per step (global sample numbers 0-3, 4-7, …), normalised by the step's target count
    assert [h["loss"] for h in big.history] == pytest.approx([h["loss"] for h in accum.history], rel=1e-5)


def test_logged_learning_rate_is_the_one_each_step_used(tmp_path):
    write_dataset(tmp_path)
    _, state = run(
        tmp_path,
        schedule={"name": "linear", "warmup_steps": 2},
        optimizer={"lr": 4e-3},
        training={"max_steps": 4},
        logging={"every": 1, "save_every": 4, "tensorboard": False},
    )
    # linear warmup over 2 steps then linear decay to 0 at step 4: steps 1-4 train at 0, 2e-3, 4e-3, 2e-3
    assert [h["lr"] for h in state.history] == pytest.approx([0.0, 2e-3, 4e-3, 2e-3])


def test_accelerate_gradient_accumulation_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")  # what `accelerate launch --gradient_…` sets
    write_dataset(tmp_path)
    with pytest.raises(SettingsError, match="gradient_accumulation_steps = 4 .*set training.grad_accum"):
        run(tmp_path)


@pytest.mark.parametrize("implementation", ["sdpa", "eager", "flex_attention"])
def test_attention_implementation_sets_decoder_and_vision_and_leaves_the_vq(implementation):
    from janus_like.training.trainer import build_model

    model, _ = build_model(config_from_dict(base_config(model={"tiny": True, "attn_implementation": implementation})))
    assert model.language_model.config._attn_implementation == implementation
    assert model.vision_model.config._attn_implementation == implementation
    assert model.vq.config._attn_implementation == "eager"  # transformers refuses sdpa and flex for it


def test_attention_implementation_that_cannot_load_is_a_settings_error():
    from transformers.utils import is_flash_attn_2_available

    from janus_like.training.trainer import build_model

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is installed here")
    with pytest.raises(SettingsError, match="model.attn_implementation = 'flash_attention_2' cannot be used here"):
        build_model(config_from_dict(base_config(model={"tiny": True, "attn_implementation": "flash_attention_2"})))


def test_stage_one_keeps_frozen_parameters_bit_identical(tmp_path):
    write_dataset(tmp_path)
    model, _ = tiny_model(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer, _ = run(tmp_path, stage=1, training={"max_steps": 3})
    after = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    trainable = set(trainer.trainable_names)
    assert trainable and all(n.startswith(("aligner.", "gen_embed.", "gen_aligner.", "gen_head.")) for n in trainable)
    for name, tensor in after.items():
        if name in trainable:
            assert not torch.equal(tensor, before[name]), f"{name} should have moved"
        else:
            assert torch.equal(tensor, before[name]), f"{name} should be frozen"


def test_stage_presets_and_custom_patterns():
    model, _ = tiny_model(seed=0)

    def groups(names):
        return {n.split(".")[0] for n in names}

    assert groups(apply_stage(model, 1)) == {"aligner", "gen_embed", "gen_aligner", "gen_head"}
    assert groups(apply_stage(model, 2)) == {"language_model", "aligner", "gen_embed", "gen_aligner", "gen_head"}
    assert groups(apply_stage(model, 3)) == {
        "language_model",
        "vision_model",
        "aligner",
        "gen_embed",
        "gen_aligner",
        "gen_head",
    }
    # the VQ tokenizer stays frozen even when asked for; custom patterns add and remove
    names = apply_stage(model, 1, trainable=["vq.*", "language_model.lm_head.*"], frozen=["gen_embed.*"])
    assert groups(names) == {"aligner", "gen_aligner", "gen_head", "language_model"}
    assert not any(p.requires_grad for p in model.vq.parameters())
    with pytest.raises(SettingsError, match="^trainable: the pattern 'no_such_module.*' matches no parameter"):
        apply_stage(model, 2, trainable=["no_such_module.*"])
    with pytest.raises(SettingsError, match="^frozen: the pattern 'nope' matches no parameter"):
        apply_stage(model, 2, frozen=["nope"])


def test_nonfinite_loss_is_skipped_or_stops(tmp_path):
    from janus_like.training.trainer import Trainer, TrainingError

    write_dataset(tmp_path)
    config = load_config(write_config(tmp_path, training={"max_steps": 3, "max_nonfinite": 2}))
    trainer = Trainer(config)
    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        model.language_model.model.norm.weight.fill_(float("nan"))
    before = model.aligner.layers[0].weight.clone()
    window = [trainer.train_data[0]]
    metrics = trainer.train_step(window)
    assert metrics["skipped_step"] and trainer.state.nonfinite_steps == 1
    assert torch.equal(model.aligner.layers[0].weight, before)  # no update from NaN gradients
    with pytest.raises(TrainingError, match="2 steps in a row"):
        trainer.train_step(window)
    trainer.config.training.nonfinite = "stop"
    with pytest.raises(TrainingError, match="training.nonfinite = stop"):
        trainer.train_step(window)


# ---------------------------------------------------------------------------- packing


@pytest.fixture
def variable_records(records):
    texts = ["short", "a somewhat longer line of text for the packer", "mid length text"]
    return (
        records
        + [{"task": "text", "text": t} for t in texts]
        + [{"task": "generation", "prompt": "a blue square on the left", "image": shape_image("square", "blue")}]
    )


def test_packed_and_padded_losses_agree(tiny, variable_records):
    model, processor = tiny
    seqs = [processor.record_to_sequence(r) for r in variable_records]
    padded = collate_padded(processor, seqs)
    packed = collate_packed(processor, seqs, max_length=160)
    assert packed["input_ids"].shape[0] < len(seqs)  # several samples share a row
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    a, b = model(**padded), model(**packed)
    assert (a.text_tokens, a.image_tokens) == (b.text_tokens, b.image_tokens)
    assert torch.allclose(a.loss, b.loss, atol=1e-5), (a.loss, b.loss)
    # without restarting positions the samples would see each other: the loss changes
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])}
    assert not torch.allclose(model(**leaky).loss, a.loss, atol=1e-4)


def test_packed_sdpa_attends_sample_by_sample_like_sdpa(tiny, variable_records, monkeypatch):
    import janus_like.training.packed_attention  # noqa: F401  registers packed_sdpa with transformers

    model, processor = tiny
    seqs = [processor.record_to_sequence(r) for r in variable_records] * 3  # several groups of samples
    packed = collate_packed(processor, seqs, max_length=160)
    one_row = collate_packed(processor, seqs, max_length=100_000)  # data.row_length beyond the context
    assert one_row["input_ids"].shape == (1, sum(len(s) for s in seqs))  # one row, no padding
    assert one_row["input_ids"].shape[1] > model.config.text_config.max_position_embeddings
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def counted_sdpa(query, *args, **kwargs):  # records the dtype the kernel computes in
        calls.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype)
        return real_sdpa(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted_sdpa)

    def run(implementation: str, training: bool, batch: dict = packed):
        model.set_attn_implementation(implementation)
        model.train(training)
        model.zero_grad()
        calls.clear()
        out = model(**batch)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.language_model.parameters() if p.grad is not None]
        return out.loss.detach(), grads, len(calls)

    try:
        loss, grads, sdpa_calls = run("sdpa", training=True)
        grouped_loss, grouped_grads, grouped_calls = run("packed_sdpa", training=True)
        eval_loss, _, eval_calls = run("packed_sdpa", training=False)
        one_row_loss, one_row_grads, _ = run("packed_sdpa", training=True, batch=one_row)
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # training under bf16: attention still in float32
            run("packed_sdpa", training=True)
            bf16_calls = list(calls)
            run("sdpa", training=True)
    finally:
        model.set_attn_implementation("sdpa")
        model.eval()
    layers = model.config.text_config.num_hidden_layers
    assert grouped_calls >= sdpa_calls + layers  # training: several groups of samples per layer
    assert eval_calls == sdpa_calls  # evaluation and generation: transformers' SDPA, one call a layer
    assert set(bf16_calls) == {torch.float32} and torch.bfloat16 in calls  # SDPA alone computes in bf16
    torch.testing.assert_close(eval_loss, loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(grouped_loss, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_row_loss, loss, atol=1e-5, rtol=1e-5)
    for a, b, c in zip(grouped_grads, grads, one_row_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c, b, atol=1e-5, rtol=1e-4)


def test_packed_sdpa_groups_samples_at_least_cost():
    from janus_like.training.packed_attention import CALL_COST, PER_TOKEN_COST, _cheapest_groups

    def cost(lengths, runs):
        return sum(CALL_COST + (e - f) * (lengths[f] ** 2 + PER_TOKEN_COST * lengths[f]) for f, e in runs)

    lengths = [409, 197, 197, 173, 162, 161, 122] + [112] * 6 + [104] * 12 + [80, 11, 4, 1]  # a stage-1 step
    runs = _cheapest_groups(lengths)
    assert [f for f, _ in runs] == sorted(f for f, _ in runs) and runs[0][0] == 0 and runs[-1][1] == len(lengths)
    assert all(f < e for f, e in runs) and all(a[1] == b[0] for a, b in zip(runs, runs[1:]))  # every sample once
    assert runs[0] == (0, 1)  # the long sample alone: padding 24 others to 409 costs far more than a call
    eights = [(f, min(f + 8, len(lengths))) for f in range(0, len(lengths), 8)]
    assert cost(lengths, runs) < 0.5 * cost(lengths, eights)
    assert _cheapest_groups([100] * 30) == [(0, 30)]  # equal lengths: one call


def test_packing_never_scores_the_next_samples_first_token(tiny):
    _, processor = tiny
    seqs = [processor.record_to_sequence({"task": "text", "text": t}) for t in ("one", "two", "three")]
    for seq in seqs:  # even if a sample's first token were a target, packing must not score it
        seq.trainable[0] = True
    batch = collate_packed(processor, seqs, max_length=64)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten()
    assert len(starts) == 3
    assert (batch["labels"][0, starts] == -100).all()


def test_first_fit_decreasing_fills_rows():
    rows = first_fit_decreasing([5, 3, 8, 2, 7, 1], capacity=10)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert len(rows) == 3 and all(sum([5, 3, 8, 2, 7, 1][i] for i in row) <= 10 for row in rows)


# ---------------------------------------------------------------------------- checkpoints


def test_interrupted_checkpoint_is_never_the_latest(tmp_path, monkeypatch):
    from accelerate import Accelerator

    write_dataset(tmp_path)
    run(tmp_path, training={"max_steps": 3})
    root = tmp_path / "out" / "checkpoints"
    assert checkpoints.latest(root).name == "step-00000003"
    good = (root / "step-00000003" / "model.safetensors").read_bytes()

    real_save = Accelerator.save_state

    def crash_mid_write(self, output_dir, **kwargs):
        real_save(self, output_dir, **kwargs)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(Accelerator, "save_state", crash_mid_write)
    reset_accelerate()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, resume="latest", training={"max_steps": 6})
    assert (root / ".tmp-step-00000006").exists()  # the half-written one
    assert [p.name for p in checkpoints.list_checkpoints(root)] == ["step-00000003"]
    assert (root / "step-00000003" / "model.safetensors").read_bytes() == good
    with pytest.raises(CheckpointError, match="not a complete training checkpoint"):
        checkpoints.resolve_resume(root, str(root / ".tmp-step-00000006"))
    monkeypatch.undo()
    reset_accelerate()
    _, state = run(tmp_path, resume="latest", training={"max_steps": 6})
    assert state.step == 6 and not (root / ".tmp-step-00000006").exists()


# ---------------------------------------------------------------------------- bad data


def _bad_dataset(tmp_path: Path) -> dict[str, str]:
    """The good dataset plus one bad record of each kind; returns kind -> expected `file:line` text."""
    write_dataset(tmp_path)
    (tmp_path / "imgs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                json.dumps({"task": "generation", "prompt": "a red circle", "image": "imgs/missing.png"}),
                json.dumps({"task": "generation", "prompt": "a red circle", "image": "imgs/corrupt.png"}),
                json.dumps({"task": "video", "clip": "x.mp4"}),
            ]
        )
        + "\n"
    )
    (tmp_path / "empty.jsonl").write_text("")
    return {
        "missing": f"{bad}:1: image file not found",
        "corrupt": f"{bad}:2: cannot read image",
        "unknown": f"{bad}:3: unknown task 'video'",
        "empty": f"{tmp_path / 'empty.jsonl'}:1: the file is empty",
    }


@pytest.mark.parametrize("kind", ["missing", "corrupt", "unknown", "empty"])
def test_bad_record_stops_with_file_and_line(tmp_path, kind):
    expected = _bad_dataset(tmp_path)
    bad_file = {"missing": "bad.jsonl", "corrupt": "bad.jsonl", "unknown": "bad.jsonl", "empty": "empty.jsonl"}[kind]
    if kind in ("missing", "corrupt"):  # keep only that line, so it is the first bad record met
        lines = (tmp_path / "bad.jsonl").read_text().splitlines()
        keep = {"missing": 0, "corrupt": 1}[kind]
        (tmp_path / "bad.jsonl").write_text("".join(line + "\n" if i == keep else "\n" for i, line in enumerate(lines)))
    with pytest.raises(DataError) as err:
        run(tmp_path, data={"files": ["train.jsonl", bad_file], "mix": None}, training={"max_steps": 30})
    assert expected[kind] in str(err.value), str(err.value)
    assert "--skip-bad-records" in str(err.value)


def test_bad_record_mid_run_leaves_checkpoints_intact(tmp_path):
    _bad_dataset(tmp_path)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"task": "generation", "prompt": "x", "image": "imgs/missing.png"}))
    data = {"files": ["train.jsonl", "bad.jsonl"], "mix": {"generation": 0.1, "text": 0.9}}
    with pytest.raises(DataError, match="bad.jsonl:1: image file not found"):
        run(tmp_path, data=data, training={"max_steps": 200, "batch_size": 1}, logging={"save_every": 1})
    root = tmp_path / "out" / "checkpoints"
    found = checkpoints.list_checkpoints(root)
    assert found, "the bad record should be met after some steps"
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    last_step = checkpoints.read_state(found[-1])["step"]
    reset_accelerate()
    _, state = run(
        tmp_path,
        resume="latest",
        skip_bad=True,
        data=data,
        training={"max_steps": last_step + 2, "batch_size": 1},
        logging={"save_every": 1},
    )
    assert state.step == last_step + 2 and state.skipped_records == 1


def test_skip_bad_records_continues_and_counts(tmp_path, capsys):
    _bad_dataset(tmp_path)
    _, state = run(
        tmp_path,
        skip_bad=True,
        data={"files": ["train.jsonl", "bad.jsonl", "empty.jsonl"], "mix": None},
        training={"max_steps": 20, "batch_size": 4},
    )
    # indexing skips the unknown task and the empty file; the image errors are met while training
    assert state.step == 20 and state.skipped_records >= 2
    err = capsys.readouterr().err
    assert "unknown task 'video'" in err and "the file is empty" in err


def test_check_data_lists_every_bad_record(tmp_path, capsys):
    from janus_like.cli import main

    expected = _bad_dataset(tmp_path)
    config = write_config(tmp_path, data={"files": ["train.jsonl", "bad.jsonl", "empty.jsonl"], "mix": None})
    assert main(["train", str(config), "--check-data"]) == 2
    err = capsys.readouterr().err
    for text in expected.values():
        assert text in err, (text, err)
    assert "4 bad records, 60 good" in err
    write_config(tmp_path)
    assert main(["train", str(config), "--check-data"]) == 0
    assert "all 60 records are good" in capsys.readouterr().out


# ---------------------------------------------------------------------------- data stream


def test_mixture_ratios_and_epochs(tmp_path):
    from janus_like.training.data import DataIndex, Mixture

    write_dataset(tmp_path)
    index = DataIndex([tmp_path / "train.jsonl"])
    mixture = Mixture(index, {"generation": 0.25, "understanding": 0.25, "text": 0.5}, seed=0)  # no interleaved
    refs = [mixture[g] for g in range(1000)]
    tasks = [index.read(r)["task"] for r in refs]
    assert (tasks.count("generation"), tasks.count("understanding"), tasks.count("text")) == (250, 250, 500)
    # within a task, each epoch visits every record once before any repeats
    text_refs = [r for r, t in zip(refs, tasks) if t == "text"]
    assert len(set(text_refs[:18])) == 18
    assert [mixture[g] for g in range(1000)] == refs  # a pure function of the sample number
    assert [Mixture(index, None, seed=1)[g] for g in range(50)] != [Mixture(index, None, seed=0)[g] for g in range(50)]


def test_processes_split_each_global_micro_batch_and_share_cfg_dropout(tmp_path):
    from janus_like.training.data import DataIndex, MicroBatches, Mixture

    write_dataset(tmp_path)
    _, processor = tiny_model()
    index = DataIndex([tmp_path / "train.jsonl"])
    mixture = Mixture(index, {"generation": 1.0}, seed=0)

    def data(world, rank, batch, dropout):
        return MicroBatches(
            index,
            mixture,
            processor,
            batch_size=batch,
            world_size=world,
            rank=rank,
            max_length=256,
            packing=False,
            cfg_dropout=dropout,
            seed=0,
        )

    one = data(1, 0, 4, 0.5)
    two = [data(2, r, 2, 0.5) for r in (0, 1)]
    assert list(one.samples(3)) == list(two[0].samples(3)) + list(two[1].samples(3))
    for sample in one.samples(3):  # the same prompt dropout for a sample, whatever the layout
        rank = 0 if sample in two[0].samples(3) else 1
        assert one.sequence(sample).ids == two[rank].sequence(sample).ids
    dropped = [s.ids[1] == processor.pad_id for s in map(data(1, 0, 1, 0.5).sequence, range(200))]
    assert 60 < sum(dropped) < 140  # about half
    assert not any(s.ids[1] == processor.pad_id for s in map(data(1, 0, 1, 0.0).sequence, range(50)))


def test_resume_needs_a_checkpoint_and_the_same_global_batch(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        run(tmp_path, resume="latest")
    reset_accelerate()
    run(tmp_path, training={"max_steps": 3})
    reset_accelerate()
    with pytest.raises(SettingsError, match="samples per global micro-batch"):
        run(tmp_path, resume="latest", training={"max_steps": 6, "batch_size": 2})
    reset_accelerate()
    # a fresh run over an earlier one's checkpoints would prune its own (by name) and keep those: refused
    before = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    with pytest.raises(SettingsError, match="holds checkpoints of an earlier run .*step-00000003.*--resume"):
        run(tmp_path, training={"max_steps": 2})
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")))
def test_example_configs_are_valid(name):
    config = load_config(Path(__file__).parents[1] / "configs" / name)
    assert config.training.max_steps >= 1 and config.data.files


def test_half_precision_model_trains_fp32_master_copies_and_saves_in_its_dtype(tmp_path):
    write_dataset(tmp_path)
    trainer, state = run(
        tmp_path,
        stage=1,
        model={"tiny": True, "dtype": "bfloat16"},
        training={"max_steps": 8, "mixed_precision": "bf16"},
    )
    params = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    assert params["gen_head.vision_head.weight"].dtype == torch.float32  # trains: fp32 master copy
    assert params["language_model.model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16  # frozen: as loaded
    assert all(math.isfinite(h["loss"]) for h in state.history)
    final = JanusLikeForConditionalGeneration.from_pretrained(tmp_path / "out" / "final")
    assert {p.dtype for p in final.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(
        final.state_dict()["gen_head.vision_head.weight"],
        params["gen_head.vision_head.weight"].detach().to(torch.bfloat16),
    )


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_takes_bf16_only_on_a_cpu_that_multiplies_it(tmp_path, monkeypatch, capsys, native):
    """Without AVX512-BF16 or AMX a bf16 matmul is a scalar loop (26.1 s a step against 1.72 in fp32)."""
    from janus_like.training import precision
    from janus_like.training.trainer import Trainer

    monkeypatch.setattr(precision, "cpu_multiplies", lambda dtype: native)
    write_dataset(tmp_path)
    data = {"files": [str(tmp_path / "train.jsonl")]}
    auto = Trainer(load_config(write_config(tmp_path / "auto", data=data, training={"mixed_precision": "auto"})))
    assert auto.accelerator.mixed_precision == ("bf16" if native else "no")
    assert f"mixed precision {'bf16' if native else 'no'}" in capsys.readouterr().out
    reset_accelerate()
    asked = Trainer(load_config(write_config(tmp_path / "bf16", data=data, training={"mixed_precision": "bf16"})))
    assert asked.accelerator.mixed_precision == "bf16"  # what was asked for, warned about where it is slow
    assert ("AVX512-BF16 or AMX" in capsys.readouterr().out) is not native


def test_gradient_checkpointing_takes_the_same_steps(tmp_path):
    """Recomputing activations in backward changes memory, not the maths: the same per-step losses."""
    write_dataset(tmp_path)
    sections = dict(data={"files": [str(tmp_path / "train.jsonl")]}, training={"max_steps": 4})
    stored, _ = run(tmp_path / "stored", **sections)
    reset_accelerate()
    recomputed, _ = run(
        tmp_path / "recomputed", **{**sections, "training": {"max_steps": 4, "gradient_checkpointing": True}}
    )
    decoder = recomputed.accelerator.unwrap_model(recomputed.model).decoder
    assert (
        decoder.gradient_checkpointing
        and not stored.accelerator.unwrap_model(stored.model).decoder.gradient_checkpointing
    )
    assert [h["loss"] for h in recomputed.state.history] == pytest.approx(
        [h["loss"] for h in stored.state.history], rel=1e-5
    )


# ---------------------------------------------------------------------------- refused early, named in one line


def _model_must_not_load(monkeypatch):
    """Make loading the model fail the test: the check under test must come first."""
    import janus_like.training.trainer as trainer_module

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(trainer_module, "build_model", fail)


def test_output_dir_that_is_a_file_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    write_dataset(tmp_path)
    (tmp_path / "afile").write_text("x")
    _model_must_not_load(monkeypatch)
    with pytest.raises(SettingsError, match="output_dir = .*afile is a file, not a folder"):
        run(tmp_path, output_dir="afile", training={"max_steps": 1})


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    """A run of 2 steps with checkpoints step-1 and step-2 (copy it before changing it)."""
    root = tmp_path_factory.mktemp("two_checkpoints")
    write_dataset(root)
    run(root, training={"max_steps": 2, "batch_size": 2}, logging={"save_every": 1})
    reset_accelerate()
    return root


def _copy_run(source: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    root = tmp_path / "run"
    shutil.copytree(source, root)
    return root, root / "out" / "checkpoints" / "step-00000002"


class _Unsafe:
    """Pickles as a call of a non-allowlisted function: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        import os

        return os.getcwd, ()


def _edit_state(change):
    def edit(ck: Path):
        path = ck / checkpoints.STATE_FILE
        state = json.loads(path.read_text())
        path.write_text(json.dumps(change(state)))

    return edit


def _int8_weight(ck: Path) -> None:
    """One floating-point weight saved as int8: loading would cast it back silently."""
    from safetensors.torch import load_file, save_file

    state = load_file(ck / "model.safetensors")
    state["gen_head.vision_head.weight"] = state["gen_head.vision_head.weight"].to(torch.int8)
    save_file(state, ck / "model.safetensors", metadata={"format": "pt"})


DAMAGE = {  # name -> (damage the checkpoint, the problem named, found before the model loads)
    "truncated model": (lambda ck: (ck / "model.safetensors").write_bytes(b"\x00" * 999), "SafetensorError", False),
    "no model": (lambda ck: (ck / "model.safetensors").unlink(), "FileNotFoundError", False),
    "int8 weights": (
        _int8_weight,
        "gen_head.vision_head.weight as torch.int8, where the model holds floating-point",
        False,
    ),
    "no optimizer": (lambda ck: (ck / "optimizer.bin").unlink(), "FileNotFoundError", False),
    "unsafe optimizer": (lambda ck: torch.save({"x": _Unsafe()}, ck / "optimizer.bin"), "UnpicklingError", False),
    "state not JSON": (lambda ck: (ck / checkpoints.STATE_FILE).write_text("{"), "JSONDecodeError", True),
    "state a list": (lambda ck: (ck / checkpoints.STATE_FILE).write_text("[]"), "holds list", True),
    "state lacks a key": (
        _edit_state(lambda s: {k: v for k, v in s.items() if k != "global_micro_batch"}),
        "lacks global_micro_batch",
        True,
    ),
    "state extra key": (_edit_state(lambda s: {**s, "foo": 1}), "unknown keys foo", True),
    "state wrong type": (_edit_state(lambda s: {**s, "step": "2"}), "step = '2' is not a count", True),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_checkpoint_names_itself_and_the_one_before(two_checkpoints, tmp_path, monkeypatch, damage):
    root, ck = _copy_run(two_checkpoints, tmp_path)
    spoil, problem, early = DAMAGE[damage]
    spoil(ck)
    if early:
        _model_must_not_load(monkeypatch)
    with pytest.raises(CheckpointError) as err:
        run(root, resume="latest", training={"max_steps": 3, "batch_size": 2}, logging={"save_every": 1})
    message = str(err.value)
    assert f"--resume {ck} is damaged" in message and problem in message, message
    assert f"the latest other complete checkpoint is {ck.parent / 'step-00000001'}" in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "training, message",
    [
        ({"max_steps": 1, "batch_size": 2}, "training.max_steps = 1 is below the checkpoint's step 2"),
        ({"max_steps": 3, "batch_size": 1, "grad_accum": 2}, "samples per global micro-batch"),
        ({"max_steps": 3, "batch_size": 2, "grad_accum": 2}, "training.grad_accum = 1, this run has 2"),
    ],
)
def test_resume_refuses_a_run_that_would_not_continue_the_checkpoint(
    two_checkpoints, tmp_path, monkeypatch, training, message
):
    root, _ = _copy_run(two_checkpoints, tmp_path)
    _model_must_not_load(monkeypatch)
    with pytest.raises(SettingsError) as err:
        run(root, resume="latest", training=training)
    assert message in str(err.value), str(err.value)


def test_resume_records_grad_accum_and_accepts_older_checkpoints_without_it(two_checkpoints, tmp_path):
    root, ck = _copy_run(two_checkpoints, tmp_path)
    assert checkpoints.read_state(ck)["grad_accum"] == 1
    _edit_state(lambda s: {k: v for k, v in s.items() if k != "grad_accum"})(ck)  # as written before the field
    _, state = run(
        root, resume="latest", training={"max_steps": 3, "batch_size": 2, "grad_accum": 2}, logging={"save_every": 1}
    )
    assert state.step == 3
    assert checkpoints.read_state(ck.parent / "step-00000003")["grad_accum"] == 2


# ---------------------------------------------------------------------------- records that cannot train


NO_TARGETS = {"task": "understanding", "messages": [{"role": "user", "content": "hi"}]}
WRONG_TYPES = [
    {"task": "interleaved", "segments": [{"type": "text", "text": 5}]},
    {"task": "text", "text": 5},
    {"task": "understanding", "messages": "hello"},
    {"task": "understanding", "messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
    {"task": "generation", "prompt": "x", "image": "imgs/0.png", "input_images": 5},
]


def test_check_data_reports_records_without_targets_or_with_wrong_types(tmp_path, capsys):
    from janus_like.cli import main

    write_dataset(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in [NO_TARGETS, *WRONG_TYPES]))
    config = write_config(tmp_path, data={"files": ["train.jsonl", "bad.jsonl"], "mix": None})
    assert main(["train", str(config), "--check-data"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: the understanding record has nothing to train" in err, err
    for line in range(2, 2 + len(WRONG_TYPES)):
        assert f"bad record at {bad}:{line}: " in err, (line, err)
    assert f"{1 + len(WRONG_TYPES)} bad records, 60 good" in err


def test_records_without_targets_are_bad_records_when_training(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "silent.jsonl").write_text(json.dumps(NO_TARGETS) + "\n")
    with pytest.raises(DataError, match="silent.jsonl:1: the understanding record has nothing to train"):
        run(tmp_path, data={"files": ["silent.jsonl"], "mix": None}, training={"max_steps": 1, "batch_size": 1})
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [NO_TARGETS, *WRONG_TYPES]))
    reset_accelerate()
    _, state = run(
        tmp_path,
        skip_bad=True,
        data={"files": ["train.jsonl", "bad.jsonl"], "mix": None},
        training={"max_steps": 3, "batch_size": 4},
    )
    assert state.step == 3 and state.skipped_records >= 1


def test_check_data_finds_the_model_as_train_does_and_checks_its_context(tmp_path, monkeypatch, capsys):
    """`model.path` relative to the working directory (not the config's folder) works for both."""
    from janus_like.cli import main

    model, processor = tiny_model()
    model.save_pretrained(tmp_path / "cwd" / "model")
    processor.save_pretrained(tmp_path / "cwd" / "model")
    write_dataset(tmp_path / "run")
    monkeypatch.chdir(tmp_path / "cwd")
    config = write_config(tmp_path / "run", model={"tiny": False, "path": "model"})
    assert main(["train", str(config), "--check-data"]) == 0, capsys.readouterr().err
    context = model.config.text_config.max_position_embeddings
    assert f"fits the model's context of {context}" in capsys.readouterr().out
    write_config(tmp_path / "run", model={"tiny": False, "path": "model"}, data={"max_length": 10**9})
    assert main(["train", str(config), "--check-data"]) == 2
    assert (
        f"data.max_length = 1000000000 is out of range; the model's context holds {context}" in capsys.readouterr().err
    )
