"""ShapesEval: the pixel classifier reads the rendered world perfectly; `janus-like eval shapes` runs."""

import json

import pytest
from PIL import Image

from janus_like.cli import main
from janus_like.evaluation.shapes import COLORS, SHAPES, Scene, all_scenes, answer_matches, classify, render


@pytest.mark.parametrize("size", [32, 64, 96])
def test_classifier_reads_every_rendered_scene(size):
    for scene in all_scenes():
        reading = classify(render(scene, size))
        assert (reading.color, reading.position, reading.shape) == (scene.color, scene.position, scene.shape), scene


def test_classifier_finds_nothing_on_a_blank_image():
    assert classify(Image.new("RGB", (32, 32), "white")).color is None


def test_world_and_prompts():
    scenes = all_scenes()
    assert len(scenes) == len(set(scenes)) == len(SHAPES) * len(COLORS) * 3
    assert Scene("circle", "red", "left").prompt == "a red circle on the left"
    assert Scene("square", "blue", "center").caption == "A blue square in the center."


def test_answer_must_name_the_right_words_only():
    scene = Scene("circle", "red", "left")
    assert answer_matches("A red circle on the left.", scene) == {"color": True, "shape": True, "position": True}
    assert answer_matches("A red or blue square on the right.", scene) == {"color": False, "shape": False,
                                                                         "position": False}


def test_eval_shapes_on_a_subset_prints_accuracies(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "shapes", "--num-scenes", "2", "--images-per-prompt", "2", "--out", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "generation: color" in printed and "chat:" in printed and "overall" in printed
    results = json.loads((out / "results.json").read_text())
    assert len(results["samples"]) == 2 and set(results["generation"]) == {"color", "position", "shape", "overall"}
    assert Image.open(out / "grid.png").size[1] == 2 * 96


def test_eval_shapes_refuses_a_bad_subset(capsys):
    assert main(["eval", "shapes", "--num-scenes", "0"]) == 2
    assert "--num-scenes" in capsys.readouterr().err
