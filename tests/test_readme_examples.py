"""The README's interleaving examples on the embedded default model write what they claim: each
prompt is a request the model knows, and the answer's text and images match it."""

import re
from pathlib import Path

import pytest

from janus_like import JanusLikePipeline
from janus_like.evaluation.shapes import Scene, classify, reads_as
from janus_like.evaluation.shapes_language import DRAW_ONE, DRAW_TWO, draw_answer, read_description

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
# `janus-like interleave "..."` and `pipe.interleave("...", ...)`
PROMPTS = re.findall(r'janus-like interleave "([^"]+)"|pipe\.interleave\("([^"]+)"', README)


@pytest.fixture(scope="module")
def pipe():
    return JanusLikePipeline.from_pretrained(device="cpu")


def _scenes_asked_for(prompt: str) -> list[Scene]:
    """The scenes whose draw request (a training phrasing) this prompt is; none: the model was never taught it."""
    for template in DRAW_ONE.train + DRAW_TWO.train:
        pattern = re.escape(template).replace(r"\{d\}", "(.+)").replace(r"\{d1\}", "(.+)").replace(r"\{d2\}", "(.+)")
        found = re.fullmatch(pattern, prompt)
        scenes = [read_description(d) for d in found.groups()] if found else []
        if scenes and all(scenes):
            return scenes
    return []


def test_the_readme_has_interleaving_examples():
    assert len(PROMPTS) >= 3


@pytest.mark.parametrize("prompt", [a or b for a, b in PROMPTS])
def test_a_readme_interleaving_example_writes_what_it_asks_for(pipe, prompt):
    scenes = _scenes_asked_for(prompt)
    assert scenes, f"the default model knows no request {prompt!r}"
    parts = pipe.interleave(prompt, seed=0, max_images=2)
    assert len(parts) == len(draw_answer(scenes))
    for got, want in zip(parts, draw_answer(scenes)):
        if isinstance(want, Scene):
            assert reads_as(classify(got), want), classify(got)
        else:
            assert got.strip() == want.strip()
