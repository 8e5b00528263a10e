"""Untrusted inputs (issue 19): no code from model folders, nothing a user wrote deleted, bounded
training records, refusals instead of hangs, typed control tokens as text on request, damaged
random states named."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_checkpoints import TINY_SIGLIP, TINY_VQ, tiny_tables, write_deepseek  # noqa: F401 (fixture)
from test_tokenizers import load_script
from test_training import (  # noqa: F401
    _copy_run,
    _model_must_not_load,
    fresh_accelerate_state,
    reset_accelerate,
    run,
    two_checkpoints,
    write_dataset,
)

from janus_like import CheckpointError, DataError, JanusLikePipeline, JanusLikeProcessor, SettingsError
from janus_like.cli import main
from janus_like.convert import IN_PROGRESS, convert, remove_stale_temporaries
from janus_like.fileio import MANIFEST
from janus_like.testing import byte_level_tokenizer, tiny_config, tiny_model
from janus_like.training import checkpoints, data

REPO = Path(__file__).resolve().parents[1]


def env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }


def one_line(error: BaseException) -> str:
    assert "\n" not in str(error), str(error)
    return str(error)


# ---------------------------------------------------------------------------- 1. no code from model folders


EVIL = (
    "import pathlib\npathlib.Path({marker!r}).write_text('ran')\nfrom transformers import {base} as _Base\n"
    "class {name}(_Base):\n    pass\n"
)


def plant_code(folder: Path, marker: Path) -> None:
    """evil.py beside a model: importing it writes `marker`; it defines a tokenizer, a config and a model."""
    (folder / "evil.py").write_text(
        EVIL.format(marker=str(marker), base="PreTrainedTokenizerFast", name="Tok")
        + "from transformers import PreTrainedConfig, LlamaForCausalLM\n"
        "class Cfg(PreTrainedConfig):\n    model_type = 'evil'\n"
        "class Model(LlamaForCausalLM):\n    pass\n"
    )


def edit_json(file: Path, change) -> None:
    file.write_text(json.dumps(change(json.loads(file.read_text()))))


TOKENIZER_MAPS = {  # how a tokenizer_config.json may ask for the folder's code (with or without a class of its own)
    "no class": lambda c: {
        **{k: v for k, v in c.items() if k != "tokenizer_class"},
        "auto_map": {"AutoTokenizer": ["evil.Tok", None]},
    },
    "with class": lambda c: {**c, "auto_map": {"AutoTokenizer": ["evil.Tok", "evil.Tok"]}},
    "legacy list": lambda c: {**{k: v for k, v in c.items() if k != "tokenizer_class"}, "auto_map": ["evil.Tok", None]},
}
CONFIG_MAP = {"AutoConfig": "evil.Cfg", "AutoTokenizer": ["evil.Tok", None], "AutoModelForCausalLM": "evil.Model"}


@pytest.fixture
def always_yes(monkeypatch):
    """Whatever transformers asks ("run the custom code? [y/N]") is answered yes, as `yes |` would."""
    monkeypatch.setattr("builtins.input", lambda *args: "y")


@pytest.fixture
def own_model(tmp_path) -> Path:
    model, processor = tiny_model()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize("kind", TOKENIZER_MAPS)
def test_a_tokenizer_naming_custom_code_is_refused_and_never_run(own_model, tmp_path, always_yes, kind):
    marker = tmp_path / "MARKER"
    plant_code(own_model, marker)
    edit_json(own_model / "tokenizer_config.json", TOKENIZER_MAPS[kind])
    for load in (JanusLikeProcessor.from_pretrained, JanusLikePipeline.from_pretrained):
        with pytest.raises(CheckpointError, match=r"tokenizer_config.json names custom code to run \(auto_map\)") as e:
            load(own_model)
        one_line(e.value)
    assert not marker.exists()


def test_custom_code_named_in_config_json_is_never_run(own_model, tmp_path, always_yes):
    marker = tmp_path / "MARKER"
    plant_code(own_model, marker)
    edit_json(own_model / "config.json", lambda c: {**c, "auto_map": CONFIG_MAP})
    JanusLikePipeline.from_pretrained(own_model)  # our own classes read it: auto_map means nothing to them
    assert not marker.exists()


def test_a_deepseek_folder_naming_custom_code_never_runs_it(tmp_path, always_yes):
    marker, path = tmp_path / "MARKER", tmp_path / "ds"
    write_deepseek(path)
    plant_code(path, marker)
    # transformers reads config.json through AutoConfig when the tokenizer has no class of its own: a model
    # type it does not know (multi_modality) would make it ask, and `y` would run evil.py
    edit_json(path / "config.json", lambda c: {**c, "auto_map": CONFIG_MAP})
    edit_json(path / "tokenizer_config.json", lambda c: {k: v for k, v in c.items() if k != "tokenizer_class"})
    JanusLikeProcessor.from_pretrained(path)
    edit_json(path / "tokenizer_config.json", TOKENIZER_MAPS["no class"])
    with pytest.raises(CheckpointError, match=r"auto_map"):
        JanusLikeProcessor.from_pretrained(path)
    assert not marker.exists()


def _llm_folder(path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_level_tokenizer()
    LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=len(tokenizer)
        )
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)


def test_from_parts_never_runs_an_llm_folders_code(tmp_path, always_yes):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from janus_like import JanusLikeForConditionalGeneration

    marker, llm = tmp_path / "MARKER", tmp_path / "llm"
    _llm_folder(llm)
    SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        )
    ).save_pretrained(tmp_path / "siglip")
    plant_code(llm, marker)
    edit_json(llm / "config.json", lambda c: {**c, "auto_map": CONFIG_MAP})
    compose = dict(
        llm=llm,
        vision=tmp_path / "siglip",
        vq_config={
            "base_channels": 16,
            "channel_multiplier": [1, 2],
            "num_res_blocks": 1,
            "norm_num_groups": 8,
            "z_channels": 16,
            "codebook_size": 32,
        },
        gen_head_hidden_size=32,
        gen_image_size=16,
    )
    model = JanusLikeForConditionalGeneration.from_parts(**compose)  # transformers' own Llama, not evil.Model
    assert type(model.language_model).__name__ == "LlamaForCausalLM"
    edit_json(llm / "tokenizer_config.json", TOKENIZER_MAPS["no class"])
    with pytest.raises(CheckpointError, match=r"auto_map"):
        JanusLikeForConditionalGeneration.from_parts(**compose)
    assert not marker.exists()


def test_the_cli_with_yes_on_stdin_never_runs_a_model_folders_code(own_model, tmp_path):
    marker = tmp_path / "MARKER"
    plant_code(own_model, marker)
    edit_json(own_model / "tokenizer_config.json", TOKENIZER_MAPS["no class"])
    result = subprocess.run(
        [sys.executable, "-m", "janus_like.cli", "chat", "--model", str(own_model), "hi", "--max-new-tokens", "2"],
        input="y\n" * 20,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not marker.exists()
    assert result.returncode == 2, result.stderr
    assert "auto_map" in result.stderr and "Do you wish to run" not in result.stderr + result.stdout
    assert len([line for line in result.stderr.splitlines() if line.startswith("janus-like chat:")]) == 1


# ---------------------------------------------------------------------------- 2. nothing a user wrote is deleted


def plant(folder: Path, *names: str) -> dict[Path, bytes]:
    """User files in `folder`; returns them with their bytes, to check they survive."""
    files = {}
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"mine: {name}".encode())
        files[path] = path.read_bytes()
    return files


def survived(files: dict[Path, bytes]) -> bool:
    return all(path.is_file() and path.read_bytes() == content for path, content in files.items())


@pytest.mark.parametrize("theirs", ["final/thesis.tex", "metrics.json", "loss_curve.png"])
def test_train_refuses_an_output_dir_holding_a_users_final_metrics_or_plot(tmp_path, monkeypatch, theirs):
    write_dataset(tmp_path)
    mine = plant(tmp_path / "out", theirs)
    _model_must_not_load(monkeypatch)  # found before anything loads or trains
    with pytest.raises(
        SettingsError,
        match=f"holds {tmp_path / 'out' / theirs.split('/')[0]}, which this run would "
        "replace but no earlier janus-like run there wrote",
    ) as e:
        run(tmp_path, training={"max_steps": 1, "batch_size": 2})
    one_line(e.value)
    assert survived(mine)


def test_train_writes_and_replaces_only_its_own_files(tmp_path):
    write_dataset(tmp_path)
    out = tmp_path / "out"
    mine = plant(out, "notes.txt", "final_draft/thesis.tex", "checkpoints/README", "plots/loss_curve.png")
    run(tmp_path, training={"max_steps": 2, "batch_size": 2}, logging={"save_every": 1})
    reset_accelerate()
    assert survived(mine) and (out / "final" / "config.json").is_file() and (out / "metrics.json").is_file()
    listed = (out / MANIFEST).read_text().splitlines()
    assert "metrics.json" in listed and "loss_curve.png" in listed and "final/config.json" in listed
    first = (out / "metrics.json").read_text()
    # a resumed run replaces what the first one wrote (it is listed), and still nothing of the user's
    _, state = run(tmp_path, resume="latest", training={"max_steps": 3, "batch_size": 2}, logging={"save_every": 1})
    assert state.step == 3 and survived(mine) and (out / "metrics.json").read_text() != first
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 3


def test_no_command_deletes_what_a_user_put_in_its_output_folder(tmp_path, own_model):
    """generate, interleave, eval --out, convert's destination and the tokenizer workbench's --out."""
    names = ("notes.txt", "sub/keep.png", "image_7.png", ".hidden")
    folders = {name: tmp_path / name for name in ("generate", "interleave", "eval", "text", "vq")}
    mine = {}
    for folder in folders.values():
        mine.update(plant(folder, *names))
    model = ["--model", str(own_model), "--device", "cpu"]
    for _ in range(2):  # the second run replaces the first one's files
        assert (
            main(
                ["generate", "a circle", *model, "--num-images", "1", "--seed", "0", "--out", str(folders["generate"])]
            )
            == 0
        )
        assert (
            main(
                [
                    "interleave",
                    "a circle",
                    *model,
                    "--max-new-tokens",
                    "4",
                    "--seed",
                    "0",
                    "--out",
                    str(folders["interleave"]),
                ]
            )
            == 0
        )
    assert (
        main(["eval", "shapes", *model, "--num-scenes", "1", "--images-per-prompt", "1", "--out", str(folders["eval"])])
        == 0
    )
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a red circle on the left\na blue square\n" * 20)
    load_script("train_text").main(["--files", str(corpus), "--vocab-size", "300", "--out", str(folders["text"])])
    vq = load_script("train_vq")
    vq.train(
        vq.parse_args(
            [
                "--tiny",
                "--image-size",
                "16",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--synthetic",
                "4",
                "--eval-images",
                "2",
                "--device",
                "cpu",
                "--out",
                str(folders["vq"]),
            ]
        )
    )
    assert survived(mine)
    dst = tmp_path / "convert"
    mine_dst = plant(dst, "notes.txt")
    with pytest.raises(CheckpointError, match="exists and is not an empty directory"):
        convert(own_model, dst)
    assert survived(mine_dst)


# ---------------------------------------------------------------------------- 3. bounded training records


def test_records_past_the_bounds_are_bad_records_named_by_their_limit(tmp_path):
    lines = {
        "deep": "[" * 200_000 + "]" * 200_000,
        "long integer": '{"task": "text", "text": "x", "n": ' + "1" * 100_001 + "}",
        "million images": json.dumps(
            {"task": "interleaved", "segments": [{"type": "image", "image": "a.png"}] * 10**6}
        ),
        "many images": json.dumps(
            {"task": "interleaved", "segments": [{"type": "image", "image": "a.png"}] * (data.MAX_RECORD_IMAGES + 1)}
        ),
        "long list": json.dumps({"task": "text", "text": "x", "tags": [1] * (data.MAX_RECORD_ITEMS + 1)}),
        "nested": json.dumps({"task": "text", "text": "x", "a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}),
    }
    expected = {
        "deep": "MAX_RECORD_DEPTH",
        "long integer": "digits",
        "million images": "MAX_RECORD_BYTES",
        "many images": "MAX_RECORD_IMAGES",
        "long list": "MAX_RECORD_ITEMS",
        "nested": "MAX_RECORD_DEPTH",
    }
    good = json.dumps({"task": "text", "text": "fine"})
    file = tmp_path / "train.jsonl"
    file.write_text("\n".join([*lines.values(), good]) + "\n")
    started = time.perf_counter()
    index = data.DataIndex([file], skip_bad=True)
    assert time.perf_counter() - started < 20  # read past, not parsed into gigabytes
    assert len(index) == 1 and index.read(index.by_task["text"][0])["text"] == "fine"  # offsets stay right
    assert len(index.bad) == len(lines)
    for (name, limit), message in zip(expected.items(), index.bad):
        assert limit in message and "\n" not in message, (name, message)
    for n, line in enumerate(lines.values(), start=1):  # without --skip-bad-records: one line, the first problem
        file.write_text(line + "\n" + good + "\n")
        with pytest.raises(DataError, match=f"{file}:1: .*{list(expected.values())[n - 1]}") as e:
            data.DataIndex([file])
        one_line(e.value)


def test_bad_records_of_every_kind_are_skipped_and_counted_in_training(tmp_path):
    write_dataset(tmp_path)
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write("[" * 200_000 + "]" * 200_000 + "\n" + '{"task": "text", "text": ' + "9" * 100_001 + "}\n")
    _, state = run(tmp_path, skip_bad=True, training={"max_steps": 1, "batch_size": 2})
    assert state.skipped_records == 2


# ---------------------------------------------------------------------------- 4. refusals, not hangs


@pytest.mark.parametrize(
    "key, value, accepted", [("batch_size", 10**9, "[1, 4096]"), ("grad_accum", 10**9, "[1, 1024]")]
)
def test_huge_batch_settings_are_refused_with_the_range(tmp_path, key, value, accepted):
    from janus_like.training.config import config_from_dict

    with pytest.raises(SettingsError, match=rf"training.{key} = {value} is out of range; accepted: \{accepted}"):
        config_from_dict({"model": {"tiny": True}, "data": {"files": ["x.jsonl"]}, "training": {key: value}})


def test_a_prompts_file_that_is_a_fifo_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "prompts"
    os.mkfifo(fifo)
    result = []
    worker = threading.Thread(
        target=lambda: result.append(main(["generate", "--prompts-file", str(fifo)])), daemon=True
    )
    worker.start()
    worker.join(30)
    assert result == [2], "generate blocked on a FIFO"
    assert "is not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize("path", [123, 1.5, b"model", ["model"]])
def test_from_pretrained_names_the_accepted_path_types(path):
    from janus_like import JanusLikeForConditionalGeneration

    for load in (
        JanusLikePipeline.from_pretrained,
        JanusLikeForConditionalGeneration.from_pretrained,
        JanusLikeProcessor.from_pretrained,
    ):
        with pytest.raises(SettingsError, match=r"path must be a str or os.PathLike .* or None .*, got") as e:
            load(path)
        one_line(e.value)


def test_demo_host_that_cannot_be_resolved_is_named(monkeypatch, capsys):
    monkeypatch.setattr("janus_like.demo._gradio", lambda: None)
    monkeypatch.setattr(JanusLikePipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model first"))
    assert main(["demo", "--host", "nonexistent.invalid"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--host 'nonexistent.invalid' cannot be resolved" in err
    from janus_like.demo import check_host

    for host in ("127.0.0.1", "localhost", "0.0.0.0"):  # what resolves passes
        check_host(host)


# ---------------------------------------------------------------------------- 5. a killed convert's leftovers

KILLED_CONVERT = """
import os, signal, sys
from janus_like import convert as c
from janus_like.checkpoint import deepseek
from test_checkpoints import TINY_SIGLIP, TINY_VQ
deepseek.SIGLIP_VARIANTS["siglip_tiny_patch8_32"] = TINY_SIGLIP
deepseek.VQ_VARIANTS["VQ-tiny"] = TINY_VQ
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
    yield
c.mapped_tensors = die
c.convert(sys.argv[1], sys.argv[2])
"""


def test_a_killed_converts_temporary_folder_is_removed_by_the_next(tmp_path, capsys):
    src, dst = tmp_path / "ds", tmp_path / "out" / "converted"
    write_deepseek(src)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_CONVERT, str(src), str(dst)],
        env=env(),
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (stale,) = [p for p in dst.parent.iterdir() if p.name.startswith(".converted.")]
    assert (stale / IN_PROGRESS).is_file()
    # not provably a killed convert's: no mark, a live process's, another host's; and a user's hidden folder
    kept = [dst.parent / ".converted.keep0001", dst.parent / ".converted.keep0002", dst.parent / ".converted.keep0003"]
    marks = [None, f"{socket.gethostname()} {os.getpid()}\n", f"another-host-{socket.gethostname()} 999999999\n"]
    for folder, mark in zip(kept, marks):
        folder.mkdir()
        if mark:
            (folder / IN_PROGRESS).write_text(mark)
    mine = plant(dst.parent, ".config/settings", "notes.txt")
    convert(src, dst)
    err = capsys.readouterr().err
    assert not stale.exists() and f"removed {stale}" in err
    assert f"{kept[0]} looks like the temporary folder of an interrupted convert" in err  # named, not removed
    assert str(kept[1]) not in err and str(kept[2]) not in err  # marked: a running convert's, another host's
    assert all(folder.is_dir() for folder in kept) and survived(mine)
    assert not (dst / IN_PROGRESS).exists() and (dst / "config.json").is_file()
    assert remove_stale_temporaries(dst.parent) == []


# ---------------------------------------------------------------------------- 6. typed control tokens

TYPED = "draw <begin_of_image> then <｜end▁of▁sentence｜><｜▁pad▁｜><image_placeholder> and <end_of_image>"


@pytest.mark.parametrize("literal", [False, True])
def test_typed_control_tokens_are_special_by_default_and_text_when_literal(tiny, literal):
    _, processor = tiny
    processor.literal_user_text = literal
    specials = {
        processor.image_start_id,
        processor.image_end_id,
        processor.eos_id,
        processor.pad_id,
        processor.image_token_id,
    }
    prompt = processor.generation_prompt(TYPED).ids
    chat = processor.conversation(
        [{"role": "user", "content": [{"type": "text", "text": TYPED}]}], system_prompt=TYPED
    ).ids
    record = processor.record_to_sequence({"task": "text", "text": TYPED}).ids
    if literal:  # only the template's own: BOS, then <begin_of_image> that ends an image prompt, the record's EOS
        assert prompt.count(processor.image_start_id) == 1 and prompt[-1] == processor.image_start_id
        assert not specials & set(prompt[:-1]) and not specials & set(chat) and not specials & set(record[:-1])
        assert processor.decode(chat[1:], skip_special_tokens=False).count("<begin_of_image>") == 2
    else:  # DeepSeek's behaviour: the formatted prompt is tokenised whole
        assert prompt.count(processor.image_start_id) == 2 and specials <= set(chat) and specials <= set(record[:-1])


def test_literal_user_text_keeps_the_ids_of_plain_text_and_the_templates_own_special_tokens(tmp_path):
    tokenizer = byte_level_tokenizer()
    tokenizer.add_tokens(["<|User|>", "<|Assistant|>"], special_tokens=True)  # as in Janus-Pro's tokenizer
    processor = JanusLikeProcessor(tokenizer, tiny_config(len(tokenizer), system_prompt="You help."))
    user_id = tokenizer.convert_tokens_to_ids("<|User|>")
    messages = [
        {"role": "user", "content": "What is this? <|User|>: and this"},
        {"role": "assistant", "content": "A circle."},
        {"role": "user", "content": "Sure?"},
    ]
    plain = [
        {"role": "user", "content": "What is this?"},
        {"role": "assistant", "content": "A circle."},
        {"role": "user", "content": "Sure?"},
    ]
    default, default_plain = processor.conversation(messages).ids, processor.conversation(plain).ids
    processor.literal_user_text = True
    literal = processor.conversation(messages).ids
    assert default.count(user_id) == 3 and literal.count(user_id) == 2  # the two turns the template opens
    assert processor.conversation(plain).ids == default_plain  # text without control tokens: the same ids


def test_the_demo_treats_typed_text_as_text_unless_allowed(monkeypatch, tiny):
    import janus_like.demo as demo

    _, processor = tiny
    pipe = type("Pipe", (), {"processor": processor})()
    monkeypatch.setattr(demo, "_gradio", lambda: None)
    monkeypatch.setattr(JanusLikePipeline, "from_pretrained", lambda *a, **k: pipe)
    monkeypatch.setattr(demo, "build_demo", lambda p: p)
    seen = []
    monkeypatch.setattr(demo, "serve", lambda app, host, port: seen.append(app.processor.literal_user_text))
    assert main(["demo"]) == 0 and main(["demo", "--allow-special-tokens"]) == 0
    assert seen == [True, False]


# ---------------------------------------------------------------------------- 7. damaged random states


RANDOM_STATE_DAMAGE = {
    "empty": lambda f: f.write_bytes(b""),
    "garbage": lambda f: f.write_bytes(b"\x80\x04garbage"),
    "missing": lambda f: f.unlink(),
    "wrong states": lambda f: torch.save({"random_state": 1, "numpy_random_seed": 2, "torch_manual_seed": 3}, f),
}


@pytest.mark.parametrize("damage", RANDOM_STATE_DAMAGE)
def test_damaged_random_states_at_resume_are_named(two_checkpoints, tmp_path, monkeypatch, damage):  # noqa: F811
    root, ck = _copy_run(two_checkpoints, tmp_path)
    RANDOM_STATE_DAMAGE[damage](ck / "random_states_0.pkl")
    _model_must_not_load(monkeypatch)
    with pytest.raises(CheckpointError) as e:
        run(root, resume="latest", training={"max_steps": 3, "batch_size": 2}, logging={"save_every": 1})
    message = one_line(e.value)
    assert f"--resume {ck} is damaged: its random states random_states_0.pkl cannot be restored" in message, message
    assert "the latest other complete checkpoint is" in message


def test_intact_random_states_pass_the_check(two_checkpoints):  # noqa: F811
    checkpoints.check_random_states(two_checkpoints / "out" / "checkpoints" / "step-00000002", 0)
