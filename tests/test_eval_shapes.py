"""ShapesEval: the pixel classifier reads the rendered world perfectly; `janus-like eval shapes` runs;
the shapes data set's interleaved requests are the prompts the pipeline sends."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from janus_like import JanusLikePipeline, SettingsError
from janus_like.cli import main
from janus_like.evaluation.shapes import (
    COLORS,
    SHAPES,
    Scene,
    all_scenes,
    answer_matches,
    classify,
    draw_answer,
    draw_request,
    edits,
    render,
)
from janus_like.evaluation.shapes_eval import ShapesEval
from janus_like.layout import GEN_IMAGE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
from shapes_data import write_shapes  # noqa: E402


@pytest.mark.parametrize("size", [32, 64, 96])
def test_classifier_reads_every_rendered_scene(size):
    for scene in all_scenes():
        reading = classify(render(scene, size))
        assert (reading.color, reading.position, reading.shape) == (scene.color, scene.position, scene.shape), scene


def test_classifier_finds_nothing_on_a_blank_image():
    assert classify(Image.new("RGB", (32, 32), "white")).color is None


def test_classifier_reads_noise_smears_and_two_objects_as_nothing():
    """Otherwise any blob reads as some colour's triangle, and a wrong drawing can score as right."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    two = render(Scene("circle", "red", "left"))
    two.paste(render(Scene("square", "blue", "right")).crop((16, 0, 32, 32)), (16, 0))
    same_colour = render(Scene("circle", "red", "left"))
    same_colour.paste(render(Scene("square", "red", "right")).crop((16, 0, 32, 32)), (16, 0))
    for image in (noise, two, same_colour):
        reading = classify(image)
        assert (reading.color, reading.position, reading.shape) == (None, None, None), reading


def test_world_and_prompts():
    scenes = all_scenes()
    assert len(scenes) == len(set(scenes)) == len(SHAPES) * len(COLORS) * 3
    assert Scene("circle", "red", "left").prompt == "a red circle on the left"
    assert Scene("square", "blue", "center").caption == "A blue square in the center."


def test_answer_must_name_the_right_words_only():
    scene = Scene("circle", "red", "left")
    assert answer_matches("A red circle on the left.", scene) == {"color": True, "shape": True, "position": True}
    assert answer_matches("A red or blue square on the right.", scene) == {
        "color": False,
        "shape": False,
        "position": False,
    }


def test_eval_shapes_on_a_subset_prints_accuracies(tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(["eval", "shapes", "--num-scenes", "2", "--images-per-prompt", "2", "--out", str(out), "--device", "cpu"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "generation: color" in printed and "chat:" in printed and "interleave: image_count" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["settings"] == {
        "model": "(embedded default model)",
        "num_scenes": 2,
        "images_per_prompt": 2,
        "seed": 0,
        "cfg_scale": 1.5,
        "image_cfg_scale": 1.0,
        "temperature": 1.0,
    }
    assert (out / ".janus-like-outputs").read_text() == "grid.png\nresults.json\n"  # a later run replaces these
    assert len(results["samples"]) == 2 and set(results["generation"]) == {"color", "position", "shape", "overall"}
    assert set(results["interleave"]) == {"image_count", "images_right", "description", "overall"}
    requests = [s["interleave"]["request"] for s in results["samples"]]
    assert requests[0].endswith("then describe it.") and requests[1].count(" a ") == 2  # one scene, then two
    kinds = {
        next(axis for axis in ("color", "position", "shape") if s["edit"]["target"][axis] not in s["prompt"])
        for s in results["samples"]
    }
    assert set(results["edit"]) == kinds | {"overall"} and "edit:" in printed  # scored per kind of edit
    edit = results["samples"][0]["edit"]
    assert len(edit["readings"]) == 2 and edit["instruction"].startswith(("make it", "move it"))
    assert Image.open(out / "grid.png").size[1] == 2 * 96


def test_eval_shapes_refuses_a_bad_subset(capsys):
    assert main(["eval", "shapes", "--num-scenes", "0"]) == 2
    assert "num_scenes = 0 is out of range" in capsys.readouterr().err
    for bad in (dict(num_scenes=-1), dict(num_scenes=0), dict(image_size=0)):  # the Python API too
        with pytest.raises(SettingsError, match=next(iter(bad))):
            ShapesEval(None, **bad)


def test_draw_requests_and_answers():
    red, blue = Scene("circle", "red", "left"), Scene("square", "blue", "center")
    assert draw_request([red]) == "Draw a red circle on the left, then describe it."
    assert draw_request([red, blue]) == "Draw a red circle on the left, then a blue square in the center."
    assert draw_answer([red]) == [" Here it is:", red, "It shows a red circle on the left."]
    assert [p for p in draw_answer([red, blue]) if isinstance(p, Scene)] == [red, blue]


def test_shapes_data_interleaved_records_start_with_the_pipelines_prompt(tmp_path):
    counts = write_shapes(tmp_path, interleaved=3, holdout_every=0)
    records = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    interleaved = [r for r in records if r["task"] == "interleaved"]
    assert counts == {"train": len(records), "eval": 0} and len(interleaved) == len(all_scenes()) + 3
    pipe = JanusLikePipeline.from_pretrained()
    for record in (interleaved[0], interleaved[-1]):
        seq = pipe.processor.record_to_sequence(record, tmp_path)
        prompt = pipe._conversation(record["prompt"], None, "")  # what pipe.interleave sends
        assert seq.ids[: len(prompt)] == prompt.ids and not any(seq.trainable[: len(prompt)])
        images = sum(part["type"] == "image" for part in record["segments"])
        assert seq.modality.count(GEN_IMAGE) == images * pipe.processor.num_gen_tokens


def test_edits_change_one_attribute():
    scene = Scene("circle", "red", "left")
    changed = {instruction: target for instruction, target in edits(scene)}
    assert len(changed) == (len(COLORS) - 1) + 2 + (len(SHAPES) - 1)
    assert changed["make it blue"] == Scene("circle", "blue", "left")
    assert changed["move it to the center"] == Scene("circle", "red", "center")
    assert changed["make it a triangle"] == Scene("triangle", "red", "left")


def test_an_editor_that_changes_nothing_scores_zero_in_every_kind_of_edit():
    class Unchanged:
        """Draws its input image back: every attribute an edit leaves alone is right, the edited one not."""

        def generate_images(self, prompt, images=None, num_images=4, **settings):
            return [images[0] if images else render(Scene("circle", "red", "left"))] * num_images

        def chat(self, question, **settings):
            return "a red circle on the left"

        def interleave(self, request, **settings):
            return []

    result, _ = ShapesEval(Unchanged(), images_per_prompt=1).run(progress=False)  # all 45 scenes: every kind
    assert set(result.edit) == {"color", "position", "shape", "overall"}
    assert all(rate == 0 for rate in result.edit.values())


def test_the_grid_shows_the_default_models_32_px_images_enlarged_with_sharp_pixels(tmp_path):
    from janus_like.evaluation.shapes_eval import save_grid

    drawing = render(Scene("circle", "red", "left"), 32)
    grid = Image.open(save_grid(["a red circle on the left"], [[drawing]], tmp_path / "grid.png"))
    cell = grid.crop((grid.width - 96, 0, grid.width, 96))
    assert cell.tobytes() == drawing.resize((96, 96), Image.Resampling.NEAREST).tobytes()
    assert len(np.unique(np.asarray(cell).reshape(-1, 3), axis=0)) > 1  # not blank: the shape is in it
