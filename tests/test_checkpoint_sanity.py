"""Checkpoints that lie (docs/loading-checks.md): before any model is built, every layout's config
is checked against its weight files' headers and the devices' memory; numeric fields, weight dtypes
and (check_weights=True) the weights' values are refused when absurd. Each refusal is one line; the
size lies come in well under a second with no allocation beyond the headers."""

import json
import math
import resource
import shutil
import time
from pathlib import Path

import pytest
import reference_janus as ref
import torch
from safetensors.torch import load_file, save_file
from test_checkpoints import (
    PRO_1B,
    one_line_error,
    tiny_tables,  # noqa: F401 (an autouse fixture, registering the tiny parts)
    write_deepseek,
    write_hf_janus,
)

from janus_like import CheckpointError, JanusLikeForConditionalGeneration, JanusLikePipeline
from janus_like.checkpoint import deepseek, default_model_path
from janus_like.checkpoint.sanity import check_before_building, room_for
from janus_like.convert import convert

load = JanusLikeForConditionalGeneration.from_pretrained
FAST_S = 0.5  # "well under a second", on a busy 2-core machine
NO_ALLOCATION_MIB = 64  # each lie would allocate gigabytes (a 10⁹-wide norm weight alone is 4 GB)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tables) -> dict[str, Path]:  # noqa: F811 (the fixture, requested)
    """One sound checkpoint per layout: the embedded default model (this package's format), a
    DeepSeek Janus-Pro in safetensors shards, a transformers Janus."""
    root = tmp_path_factory.mktemp("layouts")
    shutil.copytree(default_model_path(), root / "own")
    write_deepseek(root / "deepseek", weights="safetensors")
    write_hf_janus(root / "hf_janus", tie=False)
    return {"own": root / "own", "deepseek": root / "deepseek", "hf_janus": root / "hf_janus"}


def copy_with_config(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def refused(path: Path, match: str, within_s: float | None = None) -> str:
    """Loading `path` is a one-line CheckpointError matching `match` (within `within_s` seconds),
    and the process's peak memory does not grow; returns the message."""
    before, start = max_rss_mib(), time.perf_counter()
    message = one_line_error(CheckpointError, match, lambda: load(path))
    seconds = time.perf_counter() - start
    assert within_s is None or seconds < within_s, f"{seconds:.2f} s: {message}"
    assert max_rss_mib() - before < NO_ALLOCATION_MIB
    return message


# --------------------------------------------------------------------------- size lies, every layout


def _own(field: str, value):
    def edit(config):
        config["text_config"][field] = value

    return edit


def _deepseek(field: str, value):
    def edit(config):
        config["language_config"][field] = value
        if field == "hidden_size":  # a consistent lie: every part that must agree with it says it too
            for part in ("aligner_config", "gen_aligner_config", "gen_head_config"):
                config[part]["params"]["n_embed"] = value
            config["gen_head_config"]["params"]["image_token_embed"] = value

    return edit


def _hf_janus(field: str, value):
    def edit(config):
        config["text_config"][field] = value
        if field == "hidden_size":
            config["vision_config"]["projection_dim"] = value
            config["vq_config"].update(projection_dim=value, image_token_embed_dim=value)

    return edit


EDITS = {"own": _own, "deepseek": _deepseek, "hf_janus": _hf_janus}
SECTION = {"own": "text_config", "deepseek": "language_config", "hf_janus": "text_config"}
LIES = {  # field -> the absurd value claimed (a 10⁹ hidden size every head count divides), what the error says
    "num_hidden_layers": (10**6, r"but the weights hold \d+ \(language_model.model.layers.N\)"),
    "hidden_size": (12 * 10**8, r"but the weights disagree: language_model.model.embed_tokens.weight"),
    "vocab_size": (10**12, r"but the weights disagree: language_model.model.embed_tokens.weight"),
}


@pytest.mark.parametrize("field", list(LIES))
@pytest.mark.parametrize("layout", list(EDITS))
def test_a_config_that_lies_about_sizes_is_refused_at_once(tmp_path, checkpoints, layout, field):
    value, held = LIES[field]
    path = copy_with_config(checkpoints[layout], tmp_path / layout, EDITS[layout](field, value))
    message = refused(path, rf"{SECTION[layout]}\.{field} = {value}, {held}", within_s=FAST_S)
    assert "accepted: " in message


OWN_DISAGREEMENTS = [  # edit of the default model's config.json -> what the error names
    pytest.param(
        lambda c: c["vision_config"].update(num_hidden_layers=10**6),
        r"vision_config.num_hidden_layers = 1000000, but the weights hold 3",
        id="vision-layers",
    ),
    pytest.param(
        lambda c: c["vision_config"].update(hidden_size=10**8, num_attention_heads=1),
        r"vision_config.hidden_size = 100000000, but the weights disagree",
        id="vision-width",
    ),
    pytest.param(
        lambda c: c["vq_config"].update(channel_multiplier=[1] * 10**4),  # transformers reads longer slowly
        r"vq_config.channel_multiplier has 10000 entries, but the weights hold 4",
        id="vq-levels",
    ),
    pytest.param(
        lambda c: c["vq_config"].update(num_res_blocks=10**5), r"vq_config.num_res_blocks = 100000", id="vq-res-blocks"
    ),
    pytest.param(
        lambda c: c["vq_config"].update(codebook_size=10**10), r"vq_config.codebook_size = 10000000000", id="codebook"
    ),
    pytest.param(
        lambda c: c.update(aligner_depth=10**6), r"aligner_depth = 1000000, but the weights hold 2", id="aligner-depth"
    ),
    pytest.param(lambda c: c.update(gen_head_hidden_size=10**9), r"gen_head_hidden_size = 1000000000", id="gen-head"),
    pytest.param(
        lambda c: c["text_config"].update(num_key_value_heads=6),
        r"shape differs: language_model.model.layers.0.self_attn.k_proj.weight \(checkpoint \(128, 256\), "
        r"model \(192, 256\)\)",
        id="kv-heads",
    ),
]


@pytest.mark.parametrize("edit,match", OWN_DISAGREEMENTS)
def test_every_size_field_is_checked_against_the_headers(tmp_path, checkpoints, edit, match):
    refused(copy_with_config(checkpoints["own"], tmp_path / "own", edit), match, within_s=FAST_S)


# --------------------------------------------------------------------------- memory


class _Memory:
    available = 2**20  # 1 MiB


def test_a_model_that_cannot_fit_the_device_is_refused_before_building(checkpoints, monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Memory())  # what this machine has free
    for layout in ("own", "deepseek", "hf_janus"):
        refused(
            checkpoints[layout],
            r"needs \d+\.\d MiB \(\d+\.\dM values\) but cpu has 1\.0 MiB free; "
            r"accepted: a model that fits",
        )


@pytest.mark.parametrize("layout", ["own", "deepseek"])
def test_max_memory_of_a_placement_strategy_is_the_room(checkpoints, layout):
    one_line_error(
        CheckpointError,
        r"needs .* in torch.bfloat16\) but max_memory \{'cpu': '1MiB'\} has 1\.0 MiB free",
        lambda: load(checkpoints[layout], device_map="auto", max_memory={"cpu": "1MiB"}, dtype=torch.bfloat16),
    )
    model = load(checkpoints[layout], device_map="auto", max_memory={"cpu": "1GiB"})
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_the_room_is_what_the_chosen_devices_have_free(monkeypatch):
    import psutil

    gib = 2**30
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 8 * gib}))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: ((device.index + 1) * gib, 80 * gib))
    assert room_for() == (8 * gib, "cpu")
    assert room_for(device="cuda:1") == (2 * gib, "cuda:1")
    assert room_for(device_map={"": 0, "vq": "cpu", "gen_head": "cuda:0"}) == (9 * gib, "cuda:0 + cpu")
    assert room_for(device_map="auto") == (11 * gib, "cpu + cuda:0 + cuda:1")
    assert room_for(device_map="auto", max_memory={0: "1GiB", "cpu": "512MiB"})[0] == gib + gib // 2
    for offloading in (
        {"device_map": {"": "cpu", "vq": "disk"}},
        {"device_map": "auto", "offload_folder": "off"},
        {"device_map": "auto", "max_memory": {"cpu": "1GiB", "disk": "1TiB"}},
        {"device": "mps"},
    ):
        assert room_for(**offloading) is None, offloading  # unbounded, or not known


def _janus_pro_1b_headers() -> dict[str, torch.Tensor]:
    """Janus-Pro-1B's tensors under this package's names, as meta tensors (as its headers give them)."""
    with torch.device("meta"):
        source = ref.MultiModalityCausalLM(PRO_1B).to(torch.bfloat16).state_dict()
    return {key: value for name, tensor in source.items() for key, value in deepseek.map_tensor(name, tensor) or []}


def test_real_size_janus_pro_1b_memory_estimate():
    headers, config = _janus_pro_1b_headers(), deepseek.model_config(PRO_1B)
    gib = 2**30
    start = time.perf_counter()
    check_before_building(
        JanusLikeForConditionalGeneration, config, headers, "Janus-Pro-1B", layout="deepseek", room=(5 * gib, "cpu")
    )  # 4.2 GB bf16
    assert time.perf_counter() - start < 2
    with pytest.raises(
        CheckpointError,
        match=r"needs 7\.7\d GiB \(2\.08B values in torch.float32\) but cpu has "
        r"5\.00 GiB free",
    ):
        check_before_building(
            JanusLikeForConditionalGeneration,
            config,
            headers,
            "Janus-Pro-1B",
            layout="deepseek",
            dtype=torch.float32,
            room=(5 * gib, "cpu"),
        )


# --------------------------------------------------------------------------- dtypes


def edit_weights(path: Path, edit) -> None:
    file = path / "model.safetensors"
    state = load_file(file)
    edit(state)
    save_file(state, file, metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.float8_e4m3fn])
def test_integer_boolean_or_quantized_weights_are_refused(tmp_path, checkpoints, dtype):
    key = "gen_head.vision_head.weight"
    path = shutil.copytree(checkpoints["own"], tmp_path / "own")
    edit_weights(path, lambda state: state.update({key: state[key].to(dtype)}))
    refused(
        path,
        rf"store {key} as {dtype}, where the model holds floating-point weights; accepted: "
        r"torch.float32, .*quantized checkpoints are not supported",
    )


def test_integer_weights_in_a_deepseek_checkpoint_are_refused(tmp_path, checkpoints):
    path = shutil.copytree(checkpoints["deepseek"], tmp_path / "ds")
    shard = next(path.glob("model-0000*.safetensors"))
    state = load_file(shard)
    name = next(k for k in state if k.startswith("language_model.") and k.endswith("weight"))
    save_file({**state, name: state[name].to(torch.int8)}, shard, metadata={"format": "pt"})
    refused(path, rf"store {name} as torch.int8")


# --------------------------------------------------------------------------- numeric fields


NUMBERS = [  # edit of the default model's config.json -> what the error names
    pytest.param(
        lambda c: c["text_config"].update(rms_norm_eps=math.nan),
        r"text_config.rms_norm_eps = nan; accepted: a finite number > 0",
        id="rms_norm_eps-nan",
    ),
    pytest.param(
        lambda c: c["text_config"].update(rms_norm_eps=-1e-6),
        "text_config.rms_norm_eps = -1e-06",
        id="rms_norm_eps-negative",
    ),
    pytest.param(
        lambda c: c["vision_config"].update(layer_norm_eps=0.0),
        "vision_config.layer_norm_eps = 0.0",
        id="layer_norm_eps-zero",
    ),
    pytest.param(
        lambda c: c["text_config"]["rope_parameters"].update(rope_theta=math.inf),
        r"text_config.rope_parameters.rope_theta = inf; accepted: a finite number > 0",
        id="rope_theta-inf",
    ),
    pytest.param(
        lambda c: c["text_config"]["rope_parameters"].update(rope_type="linear", factor=math.nan),
        r"text_config.rope_parameters.factor = nan",
        id="rope-factor-nan",
    ),
    pytest.param(
        lambda c: c.update(gen_image_size=7), "gen_image_size = 7 is not a multiple of 8", id="gen_image_size-off-grid"
    ),
    pytest.param(
        lambda c: c.update(gen_image_size=8 * 64),
        r"gen_image_size = 512 gives 4096 codes .* more than the LM's context of 1024",
        id="gen_image_size-past-context",
    ),
    pytest.param(
        lambda c: c.update(default_cfg_scale=math.nan), "default_cfg_scale = nan is not accepted", id="cfg-nan"
    ),
]


@pytest.mark.parametrize("edit,match", NUMBERS)
def test_absurd_numeric_fields_are_refused(tmp_path, checkpoints, edit, match):
    refused(copy_with_config(checkpoints["own"], tmp_path / "own", edit), match)


def test_a_nan_epsilon_in_a_deepseek_config_is_named_as_there(tmp_path, checkpoints):
    path = copy_with_config(
        checkpoints["deepseek"], tmp_path / "ds", lambda c: c["language_config"].update(rms_norm_eps=math.nan)
    )
    refused(path, r"language_config.rms_norm_eps = nan; accepted: a finite number > 0")


PART_CLASSES = [
    ("vision_config", "'CLIPVisionTower'"),
    ("aligner_config", "'MlpProjector'"),
    ("gen_aligner_config", "'MlpProjector'"),
    ("gen_head_config", "'vision_head'"),
    ("gen_vision_config", "'VQ-16'"),
]


@pytest.mark.parametrize("part,accepted", PART_CLASSES)
def test_unknown_deepseek_part_classes_are_refused_with_the_accepted_ones(tmp_path, checkpoints, part, accepted):
    path = copy_with_config(checkpoints["deepseek"], tmp_path / "ds", lambda c: c[part].update(cls="HybridVisionTower"))
    refused(path, rf"{part}.cls = 'HybridVisionTower'; accepted: .*{accepted}")


# --------------------------------------------------------------------------- check_weights, convert


def poison(state: dict, key: str, value: float) -> None:
    state[key] = state[key].clone()
    state[key].view(-1)[3] = value


def test_check_weights_names_the_first_non_finite_tensor(tmp_path, checkpoints):
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    path = shutil.copytree(checkpoints["own"], tmp_path / "own")
    edit_weights(path, lambda state: poison(state, key, math.nan))
    assert load(path).language_model.model.layers[1].mlp.up_proj.weight.isnan().any()  # off by default
    one_line_error(
        CheckpointError,
        rf"{key} holds 1 NaN or infinite value \(of \d+\); accepted: finite weights",
        lambda: load(path, check_weights=True),
    )
    one_line_error(
        CheckpointError,
        rf"{key} holds 1 NaN",
        lambda: JanusLikePipeline.from_pretrained(path, device="cpu", check_weights=True),
    )


def _poisoned_deepseek(tmp_path: Path, checkpoints) -> tuple[Path, str]:
    path = shutil.copytree(checkpoints["deepseek"], tmp_path / "ds")
    shard = next(path.glob("model-0000*.safetensors"))
    state = load_file(shard)
    name = next(k for k in state if k.startswith("gen_head."))
    poison(state, name, -math.inf)
    save_file(state, shard, metadata={"format": "pt"})
    return path, name


def test_check_weights_in_a_foreign_layout_and_convert_refuses_non_finite_weights(tmp_path, checkpoints):
    path, name = _poisoned_deepseek(tmp_path, checkpoints)
    load(path)  # off by default
    one_line_error(
        CheckpointError,
        rf"{name} \(loaded as {name}\) holds 1 NaN or infinite value",
        lambda: load(path, check_weights=True),
    )
    one_line_error(
        CheckpointError,
        rf"{name} \(loaded as {name}\) holds 1 NaN or infinite value",
        lambda: convert(path, tmp_path / "out"),
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing half-written


def test_convert_checks_the_config_against_the_headers_first(tmp_path, checkpoints):
    path = copy_with_config(
        checkpoints["deepseek"], tmp_path / "ds", lambda c: c["language_config"].update(num_hidden_layers=10**6)
    )
    start = time.perf_counter()
    one_line_error(
        CheckpointError,
        r"language_config.num_hidden_layers = 1000000, but the weights hold 2",
        lambda: convert(path, tmp_path / "out"),
    )
    assert time.perf_counter() - start < FAST_S
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_sound_checkpoints_still_load_in_every_layout(checkpoints):
    for layout, path in checkpoints.items():
        model = load(path, check_weights=True)
        assert all(torch.isfinite(p).all() for p in model.parameters()), layout
