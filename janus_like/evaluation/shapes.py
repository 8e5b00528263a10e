"""The shapes world: one coloured shape at one of three places on white, its captions, and a
pixel classifier that reads colour, position and shape back from an image.

The embedded default model is trained on this world (apps/default_model/build.py) and ShapesEval
(`janus-like eval shapes`) scores it here, so rendering and scoring share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import product

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
# Hues far apart in RGB, so a blurred or slightly wrong shade still has one nearest colour.
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 0),
    "purple": (140, 40, 180),
}
POSITIONS = ("left", "center", "right")
QUESTIONS = ("What is in this image?", "What is this?", "Describe the image.", "What do you see?")

INK_THRESHOLD = 60  # a pixel is ink when some channel is this far below white (255)
MIN_INK_PIXELS = 4  # fewer ink pixels than this: no shape found
# one shape, or nothing: rendered shapes are one colour (dominance 1.0), 0.28 of the side, fill >= 0.55;
# the default model's drawings at its guidance measure >= 0.95, <= 0.28 and >= 0.54
MIN_DOMINANCE = 0.8  # the dominant colour's share of the ink
MAX_SIDE = 0.4  # the shape's bounding box side, as a fraction of the image side
MIN_FILL = 0.4  # below a triangle's ~0.55: a scattered blob


@dataclass(frozen=True)
class Scene:
    """One shape of one colour at one place."""

    shape: str
    color: str
    position: str

    @property
    def prompt(self) -> str:
        """The generation prompt, e.g. "a red circle on the left"."""
        where = "in the center" if self.position == "center" else f"on the {self.position}"
        return f"a {self.color} {self.shape} {where}"

    @property
    def caption(self) -> str:
        """The understanding answer, e.g. "A red circle on the left."."""
        return self.prompt[0].upper() + self.prompt[1:] + "."


def draw_request(scenes: Sequence[Scene]) -> str:
    """An interleaved request: one scene is drawn then described, two are drawn in turn.
    "Draw a red circle on the left, then describe it." / "Draw a red circle on the left, then a ..."."""
    if len(scenes) == 1:
        return f"Draw {scenes[0].prompt}, then describe it."
    if len(scenes) == 2:
        return f"Draw {scenes[0].prompt}, then {scenes[1].prompt}."
    raise ValueError(f"a draw request names 1 or 2 scenes, got {len(scenes)}")


def draw_answer(scenes: Sequence[Scene]) -> list[str | Scene]:
    """The answer to `draw_request(scenes)` as text and scenes (the images) in order."""
    if len(scenes) == 1:
        return [" Here it is:", scenes[0], f"It shows {scenes[0].prompt}."]
    return [f" Here is {scenes[0].prompt}:", scenes[0], f"And here is {scenes[1].prompt}:", scenes[1]]


def edits(scene: Scene) -> list[tuple[str, Scene]]:
    """Every single-attribute edit of a scene as (instruction, resulting scene):
    "make it blue", "move it to the right", "make it a square"."""
    out = [(f"make it {color}", replace(scene, color=color)) for color in COLORS if color != scene.color]
    out += [
        (f"move it to the {position}", replace(scene, position=position))
        for position in POSITIONS
        if position != scene.position
    ]
    out += [(f"make it a {shape}", replace(scene, shape=shape)) for shape in SHAPES if shape != scene.shape]
    return out


def all_scenes() -> list[Scene]:
    """Every scene of the world, in a fixed order."""
    return [Scene(s, c, p) for s, c, p in product(SHAPES, COLORS, POSITIONS)]


def render(scene: Scene, size: int = 32) -> Image.Image:
    """The scene as a `size`² RGB image: the shape is ~0.28·size wide, centred in its third."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    cx = size * {"left": 1 / 6, "center": 1 / 2, "right": 5 / 6}[scene.position]
    cy, r = size / 2, size * 0.14
    box = (round(cx - r), round(cy - r), round(cx + r) - 1, round(cy + r) - 1)
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return img


@dataclass(frozen=True)
class Reading:
    """What the classifier sees in an image; None where it finds no shape."""

    color: str | None
    position: str | None
    shape: str | None
    fill_ratio: float


def classify(image: Image.Image) -> Reading:
    """Dominant ink colour -> colour; its centroid's third -> position; its fill ratio
    (pixels / bounding box: square 1.0, circle ~0.8, triangle ~0.55) -> shape. Only one shape of
    one colour about the rendered size is read: a smear, noise or two objects read as nothing (all
    None), which no scene matches (they would otherwise read as some colour's "triangle")."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    ink = (255 - rgb).max(axis=-1) > INK_THRESHOLD
    if ink.sum() < MIN_INK_PIXELS:
        return Reading(None, None, None, 0.0)
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    nearest = ((rgb[ink][:, None, :] - palette[None]) ** 2).sum(-1).argmin(-1)
    dominant = np.bincount(nearest, minlength=len(palette)).argmax()
    mask = np.zeros_like(ink)
    mask[ink] = nearest == dominant
    ys, xs = np.nonzero(mask)
    width = rgb.shape[1]
    third = min(int(3 * (xs.mean() + 0.5) / width), 2)
    box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = float(mask.sum() / box_area)
    one_shape = (
        mask.sum() >= MIN_DOMINANCE * ink.sum()
        and fill >= MIN_FILL
        and max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) <= MAX_SIDE * max(rgb.shape[:2])
    )
    if not one_shape:
        return Reading(None, None, None, fill)
    shape = "square" if fill > 0.9 else "circle" if fill > 0.67 else "triangle"
    return Reading(list(COLORS)[dominant], POSITIONS[third], shape, fill)


def answer_matches(answer: str, scene: Scene) -> dict[str, bool]:
    """Whether a free-text answer names the scene's colour, shape and position (and no other)."""
    words = set(answer.lower().replace(".", " ").replace(",", " ").split())

    def names_only(truth: str, options) -> bool:
        return truth in words and not any(o in words for o in options if o != truth)

    return {
        "color": names_only(scene.color, COLORS),
        "shape": names_only(scene.shape, SHAPES),
        "position": names_only(scene.position, POSITIONS),
    }
