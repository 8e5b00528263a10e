"""`janus-like generate | chat | interleave`: files written, one-line errors with exit status 2."""

import json

import pytest

from janus_like.cli import main
from janus_like.fileio import MANIFEST
from janus_like.testing import shape_image, write_image


@pytest.fixture
def saved(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_generate_writes_pngs(saved, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "a red circle",
                "--model",
                saved,
                "--num-images",
                "2",
                "--seed",
                "0",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert visible(out) == ["image_0.png", "image_1.png", "settings.json"]
    assert "image_0.png" in capsys.readouterr().out
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seed"] == 0 and settings["prompts"] == ["a red circle"] and settings["num_images"] == 2


def test_a_run_without_seed_records_the_one_it_drew_and_repeats_from_it(saved, tmp_path):
    assert main(["generate", "a red circle", "--model", saved, "--num-images", "2", "--out", str(tmp_path / "a")]) == 0
    seed = json.loads((tmp_path / "a" / "settings.json").read_text())["seed"]
    assert (
        main(
            [
                "generate",
                "a red circle",
                "--model",
                saved,
                "--num-images",
                "2",
                "--seed",
                str(seed),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    for name in ("image_0.png", "image_1.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def visible(folder) -> list[str]:
    """What a user sees in a folder (the run manifest is a dotfile)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_generate_draws_several_prompts_in_one_batch(saved, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "a red circle",
                "a blue square",
                "--model",
                saved,
                "--num-images",
                "2",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "prompt_0/image_0.png",
        "prompt_0/image_1.png",
        "prompt_1/image_0.png",
        "prompt_1/image_1.png",
    ]
    assert (out / "prompts.txt").read_text() == "prompt_0\ta red circle\nprompt_1\ta blue square\n"
    assert main(["generate", "a red circle", "a blue\tsquare\nbelow", "--model", saved, "--out", str(out)]) == 0
    assert (out / "prompts.txt").read_text().splitlines()[1] == "prompt_1\ta blue\\tsquare\\nbelow"


def test_a_new_run_replaces_the_earlier_outputs_and_files_get_the_umask_mode(saved, tmp_path, umask):
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)  # not ours: left alone, as are files that only look like ours
    (out / "prompt_archive").mkdir()
    (out / "prompt_archive" / "old.txt").write_text("mine")
    (out / "image_2023_holiday.png").write_bytes(b"mine")
    mine = ["image_2023_holiday.png", "keep", "prompt_archive"]
    assert (
        main(["generate", "a red circle", "a blue square", "--model", saved, "--num-images", "2", "--out", str(out)])
        == 0
    )
    assert main(["generate", "a red circle", "--model", saved, "--num-images", "1", "--out", str(out)]) == 0
    assert visible(out) == sorted(["image_0.png", "settings.json", *mine])  # no prompt_*/ or prompts.txt left
    assert (out / "image_0.png").stat().st_mode & 0o777 == 0o666 & ~umask
    assert visible(out) == sorted(p.name for p in out.iterdir() if p.name != MANIFEST)  # no temp folder left
    assert (
        main(
            [
                "interleave",
                "Draw a red circle.",
                "--model",
                saved,
                "--max-new-tokens",
                "4",
                "--max-images",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert visible(out) == sorted(["index.html", "index.md", "settings.json", *mine])
    assert main(["generate", "a red circle", "--model", saved, "--num-images", "1", "--out", str(out)]) == 0
    assert visible(out) == sorted(["image_0.png", "settings.json", *mine])  # no stale index.* from interleave
    assert (out / "prompt_archive" / "old.txt").read_text() == "mine"


def test_generate_draws_a_prompts_file_in_batches_of_at_most_64_images(saved, tmp_path, monkeypatch):
    from janus_like.generation.scheduler import Scheduler

    rows, submit = [], Scheduler.submit

    def recording(self, requests, settings):
        rows.append(len(requests))
        return submit(self, requests, settings)

    monkeypatch.setattr(Scheduler, "submit", recording)
    (tmp_path / "prompts.txt").write_text("".join(f"prompt number {i}\n\n" for i in range(5)))
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--prompts-file",
                str(tmp_path / "prompts.txt"),
                "--model",
                saved,
                "--num-images",
                "30",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert rows == [60, 60, 30]  # 2 prompts x 30 images per batch, blank lines skipped
    assert len(list(out.rglob("*.png"))) == 150 and (out / "prompt_4" / "image_29.png").is_file()


def test_chat_prints_the_answer(saved, tmp_path, capsys):
    image = write_image(tmp_path / "in.png", shape_image())
    assert main(["chat", "What is this?", "--model", saved, "--image", str(image), "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.endswith("\n")


@pytest.mark.slow
def test_chat_with_compile_answers_like_eager(saved, capsys):
    argv = ["chat", "hello", "--model", saved, "--max-new-tokens", "12", "--device", "cpu"]
    assert main(argv) == 0
    eager = capsys.readouterr().out
    assert main(argv + ["--compile"]) == 0
    assert capsys.readouterr().out == eager


def _submitted_settings(monkeypatch) -> list:
    """The GenerationSettings of every call the scheduler is given from now on (calls go through)."""
    from janus_like.generation.scheduler import Scheduler

    seen, submit = [], Scheduler.submit

    def recording(self, requests, settings):
        seen.append(settings)
        return submit(self, requests, settings)

    monkeypatch.setattr(Scheduler, "submit", recording)
    return seen


def test_generate_passes_image_guidance_to_the_engine(saved, tmp_path, monkeypatch):
    seen = _submitted_settings(monkeypatch)
    image = write_image(tmp_path / "in.png", shape_image())
    assert (
        main(
            [
                "generate",
                "make it blue",
                "--model",
                saved,
                "--image",
                str(image),
                "--num-images",
                "1",
                "--image-cfg-scale",
                "2.5",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert [s.image_cfg_scale for s in seen] == [2.5] and (tmp_path / "out" / "image_0.png").is_file()


def test_generate_passes_the_plausibility_cut_and_records_the_resolved_one(saved, tmp_path, monkeypatch):
    seen = _submitted_settings(monkeypatch)
    argv = ["generate", "a red circle", "--model", saved, "--num-images", "1"]
    assert main(argv + ["--cfg-plausibility", "0.2", "--out", str(tmp_path / "a")]) == 0
    assert main(argv + ["--out", str(tmp_path / "b")]) == 0  # the model's default: 0 for this config
    assert [s.cfg_plausibility for s in seen] == [0.2, 0.0]
    assert json.loads((tmp_path / "a" / "settings.json").read_text())["cfg_plausibility"] == 0.2
    assert json.loads((tmp_path / "b" / "settings.json").read_text())["cfg_plausibility"] == 0.0


def test_interleave_writes_index_md_and_html(saved, tmp_path):
    out = tmp_path / "story"
    assert (
        main(
            [
                "interleave",
                "Draw a red circle.",
                "--model",
                saved,
                "--seed",
                "0",
                "--max-new-tokens",
                "6",
                "--temperature",
                "0",
                "--image-temperature",
                "0.7",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "index.md").is_file() and (out / "index.html").read_text().startswith("<!doctype html>")
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["temperature"], settings["image_temperature"]) == (0.0, 0.7)


def test_interleave_files_list_images_in_order(tmp_path):
    from PIL import Image

    from janus_like.commands import write_interleaved

    parts = [
        "first <b>",
        shape_image("circle"),
        "then\nnext line ![fake](image_0.png)",
        shape_image("square"),
        "  \n",
        "end <img src=x onerror=alert(1)>",
    ]
    write_interleaved(parts, tmp_path)
    md = (tmp_path / "index.md").read_text()
    assert md.index("first") < md.index("image_0.png") < md.index("then") < md.index("image_1.png") < md.index("end")
    assert md.count("![") == 2 and "![fake]" not in md  # the model's text cannot add an image of its own
    assert "<img" not in md and "&lt;img src=x" in md and "<b>" not in md
    page = (tmp_path / "index.html").read_text()
    assert "&lt;b&gt;" in page and page.count("<img ") == 2 and "white-space: pre-wrap" in page
    assert "<p></p>" not in page  # whitespace-only text is no paragraph
    assert Image.open(tmp_path / "image_1.png").size == (64, 64)
    # small images are shown enlarged by a whole factor, with sharp pixels; large ones as they are
    assert page.count('width="192" height="192"') == 2 and "image-rendering: pixelated" in page
    write_interleaved([shape_image(size=384)], tmp_path / "large")
    assert 'width="384" height="384"' in (tmp_path / "large" / "index.html").read_text()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["generate", "x", "--temperature", "-1"], "temperature"),
        (["generate", "x", "--num-images", "0"], "num_images"),
        (["generate", "x", "--cfg-scale", "-2"], "cfg_scale"),
        (["generate", "x", "--image", __file__, "--image-cfg-scale", "-2"], "image_cfg_scale"),
        (["generate", "x", "--top-p", "0"], "top_p"),
        (["generate", "x", "--cfg-plausibility", "1.5"], "cfg_plausibility"),
        (["generate", ""], "empty"),
        (["generate"], "no prompt"),
        (["generate", "--prompts-file", "/nonexistent/prompts.txt"], "cannot read"),
        (["chat", "x" * 2000], "context"),
        (["interleave", "x", "--max-images", "99"], "max_images"),
        (["generate", "x", "--seed", str(2**64)], "seed"),
        (["generate", "x", "--num-images", "abc"], "invalid int value"),  # argparse's errors too: one line
        (["generate", "x", "--out", ""], "--out is empty"),
        (["generate", "x", "--out", __file__], "is a file, not a folder"),
        (["interleave", "x", "--out", f"{__file__}/story"], "is a file, not a folder"),
        (["generate", "x", "--device", "nonsense"], "is not a device of this machine"),
        (["eval", "shapes", "--out", __file__], "is a file, not a folder"),  # before any scene is drawn
        (["eval", "shapes", "--seed", str(2**63)], "seed = "),
        (["eval", "shapes", "--cfg-plausibility", "-1"], "cfg_plausibility"),  # before any scene is drawn
        (["interleave", "x", "--cfg-plausibility", "2"], "cfg_plausibility"),
        (["interleave", "x", "--image-temperature", "-1"], "image_temperature"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(saved, argv, words, capsys):
    assert main(argv + ["--model", saved]) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("janus-like")]
    assert len(ours) == 1 and words in ours[0] and "Traceback" not in err and "usage:" not in err


def test_missing_default_model_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("janus_like.checkpoint.DEFAULT_MODEL_DIR", tmp_path)
    assert main(["generate", "a cat"]) == 2
    assert "default model" in capsys.readouterr().err
