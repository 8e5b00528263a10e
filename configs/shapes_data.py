"""Write the shapes world v2 (janus_like.evaluation.shapes) as a training JSONL data set (docs/ARCHITECTURE.md §6).

Only training combinations appear (shapes.is_held_out: a seeded ~20% of the single-object
combinations and two-object pairings never do, in any task), phrased only with the training
phrasings (shapes_language). Records, each from a seeded random scene:

- generation: a prompt -> the scene's render (one object, or two side by side / one above the other);
- edits: a varied view of a one-object scene + an instruction (recolour, change shape, resize, move)
  -> the edited scene's render (a generation record with input_images);
- understanding: a varied view (several sizes, small shifts and shades) and a conversation about it:
  describe, what colour / shape / where / how big, how many, is there a …, with follow-up turns
  about the same image; images with no shape (blank, noise, photo-like clutter, some of them not
  square) answered as such;
- interleaved: draw a scene and describe it, or draw two in turn;
- text: sentences about scenes.

    python configs/shapes_data.py data/shapes     # -> train.jsonl, renders/*.png, views/*.png
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from tqdm.auto import tqdm

from janus_like.evaluation import shapes_language as lang
from janus_like.evaluation.shapes import (
    COLORS,
    NO_SHAPE_KINDS,
    SHAPES,
    SIZES,
    SMOOTHING_FACTORS,
    Object,
    Scene,
    edits,
    is_held_out,
    no_shape_image,
    random_scene,
    render,
    render_varied,
)

VIEW_SIZES = (48, 64, 64, 96)  # sides of understanding and edit-input views (64 twice: the usual size)
# width / height of a share of the no-shape images: a camera's page is padded to a square by the
# processor, and the padding bars are no objects either
PAGE_ASPECTS = (4 / 3, 3 / 4, 16 / 9, 9 / 16)
# records of each kind; the build's recipe.yaml passes its own
COUNTS = {"generation": 6000, "edit": 3000, "understanding": 8000, "interleaved": 1500, "text": 1000}
# share of two-object scenes among understanding images: telling which object has which colour and
# shape is the harder read, and short of data at 0.5 (docs/default-model.md, the side runs)
UNDERSTANDING_TWO_SHARE = 0.65


class ImageWriter:
    """Writes images under root: a scene's render once, as renders/NAME.png (what the VQ trains on:
    exactly what generation targets), and views numbered as views/NNNNNN.png."""

    def __init__(self, root: Path, size: int, rng: random.Random, view_sizes: tuple[int, ...] = VIEW_SIZES,
                 smoothing: tuple[int, ...] = SMOOTHING_FACTORS):  # fmt: skip
        self.root, self.size, self.rng, self.views = root, size, rng, 0
        self.view_sizes, self.smoothing = view_sizes, smoothing
        for folder in ("renders", "views"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.renders: dict[Scene, str] = {}

    def render(self, scene: Scene) -> str:
        if scene not in self.renders:
            name = "_".join(f"{o.size}-{o.color}-{o.shape}-{o.position}" for o in scene.objects)
            self.renders[scene] = f"renders/{name}.png"
            render(scene, self.size).save(self.root / self.renders[scene])
        return self.renders[scene]

    def view(self, scene: Scene | None) -> str:
        """A varied view of the scene, or (None) an image with no shape."""
        side = self.rng.choice(self.view_sizes)
        if scene is None:
            image = no_shape_image(self.rng.choice(NO_SHAPE_KINDS), side, self.rng)
            if self.rng.random() < 0.4:
                aspect = self.rng.choice(PAGE_ASPECTS)
                image = image.crop((0, 0, round(side * min(aspect, 1)), round(side / max(aspect, 1))))
        else:
            image = render_varied(scene, side, self.rng, factors=self.smoothing)
        self.views += 1
        path = f"views/{self.views:06d}.png"
        image.save(self.root / path)
        return path


def user(text: str, image: str | None = None) -> dict:
    content = ([{"type": "image", "image": image}] if image else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def training_scene(rng: random.Random, two_share: float = 0.4) -> Scene:
    return random_scene(rng, 2 if rng.random() < two_share else 1, held=False)


def asked_object(scene: Scene | None, rng: random.Random) -> Object:
    """What an "is there a …" question names: half the time an object of the scene, else a random
    one; by colour and shape, sometimes with the size or by shape alone."""
    if scene is not None and rng.random() < 0.5:
        o = rng.choice(scene.objects)
    else:
        o = Object(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(SIZES), "center")
    form = rng.random()
    return Object(None if form < 0.2 else o.color, o.shape, o.size if form > 0.7 else None, o.position)


def conversation(
    scene: Scene | None, image: str, rng: random.Random, describe_share: float | None = None
) -> list[dict]:
    """A first question about the image and, for one object, up to two follow-ups about it.
    `describe_share`: ask for a description this often, else as usual (a description names every
    attribute: the most for a vision tower to learn from per image)."""
    one = scene is None or len(scene.objects) == 1
    kinds = ["describe", "describe", "count", "exists"] + (["color", "shape", "position", "size"] if one else [])
    kind = "describe" if describe_share is not None and rng.random() < describe_share else rng.choice(kinds)
    if kind == "exists":
        asked = asked_object(scene, rng)
        question, reply = lang.exists_question(asked, rng), lang.answer("exists", scene, asked)
    else:
        phrasings = {"describe": lang.DESCRIBE, "count": lang.COUNT_Q, **lang.QUESTIONS}[kind]
        question, reply = phrasings.pick(rng, "train"), lang.answer(kind, scene)
    messages = [user(question, image), assistant(reply)]
    if scene is not None and one:
        for attribute in rng.sample(list(lang.FOLLOW_UP), rng.choice([0, 0, 1, 2])):
            messages += [user(lang.FOLLOW_UP[attribute].pick(rng, "train")), assistant(lang.answer(attribute, scene))]
    return messages


def text_record(scene: Scene, rng: random.Random) -> str:
    d = lang.describe(scene)
    if len(scene.objects) == 1:
        o = scene.object
        options = [f"The {o.color} {o.shape} is {o.size} and {lang.WHERE[o.position]}.",
                   f"There is {d}.", f"The picture shows {d}.", f"In this image there is {d}."]  # fmt: skip
    else:
        options = [f"There is {d}.", f"The picture shows {d}.", "There are two shapes in this image."]
    return rng.choice(options)


def write_shapes(
    root: Path,
    size: int = 64,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    view_sizes: tuple[int, ...] = VIEW_SIZES,
    smoothing: tuple[int, ...] = SMOOTHING_FACTORS,
    describe_share: float | None = None,
) -> dict[str, int]:
    """Write renders/, views/ and train.jsonl under `root` from training combinations only; returns
    the record counts. `view_sizes` and `smoothing`: the sides of varied views and the factors they
    may be drawn at before downsampling; `describe_share`: see `conversation`."""
    counts = dict(COUNTS, **(counts or {}))
    rng = random.Random(seed)
    images = ImageWriter(root, size, rng, view_sizes, smoothing)
    records: list[dict] = []
    bar = tqdm(total=sum(counts.values()), desc="writing shapes data", unit="record")

    def add(record: dict) -> None:
        records.append(record)
        bar.update()

    for _ in range(counts["generation"]):
        scene = training_scene(rng)
        add({"task": "generation", "prompt": lang.generation_prompt(scene, rng), "image": images.render(scene)})
    for _ in range(counts["edit"]):
        source = random_scene(rng, 1, held=False)
        attribute, value, target = rng.choice([e for e in edits(source) if not is_held_out(e[2])])
        instruction = lang.edit_instruction(attribute, value, rng)
        add({"task": "generation", "prompt": instruction, "input_images": [images.view(source)],
             "image": images.render(target)})  # fmt: skip
    for _ in range(counts["understanding"]):
        scene = None if rng.random() < 0.08 else training_scene(rng, two_share=UNDERSTANDING_TWO_SHARE)
        add({"task": "understanding", "messages": conversation(scene, images.view(scene), rng, describe_share)})
    for _ in range(counts["interleaved"]):
        scenes = [random_scene(rng, 1, held=False) for _ in range(rng.choice([1, 2]))]
        segments = [
            {"type": "text", "text": part} if isinstance(part, str) else {"type": "image", "image": images.render(part)}
            for part in lang.draw_answer(scenes)
        ]
        add({"task": "interleaved", "prompt": lang.draw_request(scenes, rng), "segments": segments})
    for _ in range(counts["text"]):
        add({"task": "text", "text": text_record(training_scene(rng), rng)})
    bar.close()
    rng.shuffle(records)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    by_task = {task: sum(r["task"] == task for r in records) for task in dict.fromkeys(r["task"] for r in records)}
    print(f"wrote {len(records)} records {by_task} and {len(images.renders)} renders + {images.views} views to {root}")
    return by_task


if __name__ == "__main__":
    write_shapes(Path(sys.argv[1] if len(sys.argv) > 1 else "data/shapes"))
