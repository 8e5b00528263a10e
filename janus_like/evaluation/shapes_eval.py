"""ShapesEval (`janus-like eval shapes`): can a model draw and read the shapes world?

Generation: for a fixed, seeded list of scenes the model draws each prompt; `classify` reads the
drawing's colour, position and shape back, and an image counts as right overall when all three
match. Understanding: the model is asked "What is in this image?" about each rendered scene
(greedy), and the answer must name the scene's colour, shape and position and no other.
Interleave: the model is asked to draw a scene and describe it, or to draw two scenes in turn
(shapes.draw_request); a request is right when it gets exactly that many images, each image
reads back as its scene, and a description names the scene. Edit: the model is given a rendered
scene and one single-attribute instruction ("make it blue", "move it to the right", "make it a
square"; shapes.edits) and each image it draws must read back as the edited scene; scored per kind
of edit (an image that repeats its input scores 0 in every kind) and overall.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..commands import load_pipeline, run_settings
from ..errors import SettingsError, is_int
from ..fileio import check_output_folder, output_set, save_image, write_json
from ..generation.settings import MAX_SEED
from ..pipeline import JanusLikePipeline
from .shapes import Scene, all_scenes, answer_matches, classify, draw_request, edits, render

AXES = ("color", "position", "shape")
QUESTION = "What is in this image?"


@dataclass
class ShapesResult:
    """Accuracies in [0, 1] and the per-scene details behind them."""

    generation: dict[str, float]
    chat: dict[str, float]
    interleave: dict[str, float]
    edit: dict[str, float]
    samples: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join(
            f"{name + ':':<12}" + " ".join(f"{k} {v:.1%}" for k, v in scores.items())
            for name, scores in (
                ("generation", self.generation),
                ("chat", self.chat),
                ("interleave", self.interleave),
                ("edit", self.edit),
            )
        )


@dataclass
class ShapesEval:
    """Draw and describe `num_scenes` scenes (all 45 by default), in an order fixed by `seed`."""

    pipe: JanusLikePipeline
    num_scenes: int | None = None
    images_per_prompt: int = 4
    seed: int = 0
    cfg_scale: float | None = None  # None: the model's default guidance
    image_cfg_scale: float | None = None  # the edit section's image guidance (None: 1, no separate term)
    temperature: float = 1.0
    image_size: int = 64  # side of the rendered images the model is asked about

    def __post_init__(self) -> None:
        check_settings(self.num_scenes, self.images_per_prompt, self.seed, self.image_size)

    def scenes(self) -> list[Scene]:
        scenes = all_scenes()
        random.Random(self.seed).shuffle(scenes)
        return scenes[: self.num_scenes]

    def run(self, progress: bool = True) -> tuple[ShapesResult, list[list[Image.Image]]]:
        """Scores and, per scene, the images drawn."""
        scenes = self.scenes()
        partners, instructions = random.Random(self.seed + 1), random.Random(self.seed + 2)
        samples, drawings = [], []
        for i, scene in enumerate(tqdm(scenes, desc="ShapesEval", unit="scene", disable=not progress)):
            seed, picture = self.seed + i, render(scene, self.image_size)
            images = self._draw(scene.prompt, seed)
            answer = self.pipe.chat(QUESTION, images=[picture], max_new_tokens=48)
            # every other request draws two scenes: this one, then a random other one
            request = [scene] if i % 2 == 0 else [scene, partners.choice([s for s in all_scenes() if s != scene])]
            instruction, edited = instructions.choice(edits(scene))
            drawings.append(images)
            samples.append(
                {
                    "prompt": scene.prompt,
                    "readings": [asdict(classify(im)) for im in images],
                    "answer": answer,
                    "named": answer_matches(answer, scene),
                    "interleave": self.interleave(request, seed),
                    "edit": {
                        "instruction": instruction,
                        "target": asdict(edited),
                        "readings": [asdict(classify(im)) for im in self._draw(instruction, seed, picture)],
                    },
                }
            )
        generation = [_axes_right(r, scene) for scene, s in zip(scenes, samples) for r in s["readings"]]
        # per kind of edit (colour, position, shape), the images that read back as the edited scene: scoring
        # each axis of every edit would mostly count the two attributes an edit leaves alone
        edit = [
            {_edited_axis(scene, target): all(_axes_right(r, target).values())}
            for scene, s in zip(scenes, samples)
            for target in [Scene(**s["edit"]["target"])]
            for r in s["edit"]["readings"]
        ]
        return ShapesResult(
            _rates(generation),
            _rates([s["named"] for s in samples]),
            _rates([s["interleave"]["scores"] for s in samples]),
            _rates(edit),
            samples,
        ), drawings

    def _draw(self, prompt: str, seed: int, image: Image.Image | None = None) -> list[Image.Image]:
        return self.pipe.generate_images(
            prompt,
            images=None if image is None else [image],
            num_images=self.images_per_prompt,
            cfg_scale=self.cfg_scale,
            image_cfg_scale=self.image_cfg_scale,
            temperature=self.temperature,
            seed=seed,
        )

    def interleave(self, scenes: list[Scene], seed: int) -> dict:
        """Ask for `draw_request(scenes)`: what came back and its scores (exactly len(scenes)
        images; each reads back as its scene; for one scene, the text after it names the scene)."""
        parts = self.pipe.interleave(
            draw_request(scenes),
            seed=seed,
            max_new_tokens=256,
            max_images=2,
            cfg_scale=self.cfg_scale,
            temperature=self.temperature,
        )
        images = [p for p in parts if isinstance(p, Image.Image)]
        readings = [asdict(classify(im)) for im in images]
        scores = {
            "image_count": len(images) == len(scenes),
            "images_right": len(readings) >= len(scenes)
            and all(all(_axes_right(r, scene).values()) for r, scene in zip(readings, scenes)),
        }
        if len(scenes) == 1:
            first_image = next((k for k, p in enumerate(parts) if isinstance(p, Image.Image)), len(parts))
            described = "".join(p for p in parts[first_image:] if isinstance(p, str))
            scores["description"] = all(answer_matches(described, scenes[0]).values())
        scores["overall"] = all(scores.values())
        return {
            "request": draw_request(scenes),
            "text": [p for p in parts if isinstance(p, str)],
            "readings": readings,
            "scores": scores,
        }


def _edited_axis(scene: Scene, target: Scene) -> str:
    """The one attribute an edit changes."""
    return next(axis for axis in AXES if getattr(scene, axis) != getattr(target, axis))


def _axes_right(reading: dict, scene: Scene) -> dict[str, bool]:
    return {axis: reading[axis] == getattr(scene, axis) for axis in AXES}


def _rates(hits: list[dict[str, bool]]) -> dict[str, float]:
    """Per key, the fraction of the dicts that hold True there (over the dicts that have the key);
    "overall" (all keys True) is added when the dicts do not carry it."""
    keys = list(dict.fromkeys(k for h in hits for k in h))
    if "overall" not in keys:
        hits = [dict(h, overall=all(h.values())) for h in hits]
        keys.append("overall")
    return {k: sum(h[k] for h in hits if k in h) / max(sum(k in h for h in hits), 1) for k in keys}


def save_grid(prompts: list[str], drawings: list[list[Image.Image]], path: Path, cell: int = 96) -> Path:
    """One row per prompt: the prompt, then its images enlarged (nearest neighbour) to `cell` px."""
    label = 200
    columns = max(len(row) for row in drawings)
    grid = Image.new("RGB", (label + columns * cell, len(prompts) * cell), "white")
    draw = ImageDraw.Draw(grid)
    for r, (prompt, row) in enumerate(zip(prompts, drawings)):
        draw.text((6, r * cell + cell // 2 - 6), prompt, fill="black")
        for c, image in enumerate(row):
            grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (label + c * cell, r * cell))
    return save_image(grid, path)


def check_settings(num_scenes: int | None, images_per_prompt: int, seed: int, image_size: int = 64) -> None:
    """The evaluation's settings in range (checked before any model loads)."""
    last_seed = MAX_SEED - len(all_scenes()) - 2  # each scene draws with seed + its index
    for name, value, low, high in (
        ("num_scenes", num_scenes, 1, len(all_scenes())),
        ("images_per_prompt", images_per_prompt, 1, 16),
        ("seed", seed, 0, last_seed),
        ("image_size", image_size, 16, 1024),
    ):
        if value is None and name == "num_scenes":
            continue
        if not is_int(value) or not low <= value <= high:
            raise SettingsError(f"{name} = {value!r} is out of range; accepted: {low} to {high}")


def eval_command(args: argparse.Namespace) -> int:
    """`janus-like eval shapes`: print the accuracies, write OUT/grid.png and OUT/results.json."""
    check_settings(args.num_scenes, args.images_per_prompt, args.seed)
    check_output_folder(args.out)
    pipe = load_pipeline(args)
    evaluation = ShapesEval(
        pipe,
        num_scenes=args.num_scenes,
        images_per_prompt=args.images_per_prompt,
        seed=args.seed,
        cfg_scale=args.cfg_scale,
        image_cfg_scale=args.image_cfg_scale,
        temperature=args.temperature,
    )
    result, drawings = evaluation.run()
    settings = run_settings(
        args, pipe, args.seed, num_scenes=len(result.samples), images_per_prompt=args.images_per_prompt
    )
    with output_set(args.out) as tmp:  # replaces the previous run's files in --out, and only those
        save_grid([s["prompt"] for s in result.samples], drawings, tmp / "grid.png")
        write_json(tmp / "results.json", {"settings": settings, **asdict(result)}, indent=2)
    out = Path(args.out)
    print(result.summary())
    print(f"wrote {out / 'grid.png'} and {out / 'results.json'}")
    return 0
