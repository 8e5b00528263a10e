"""ShapesEval (`janus-like eval shapes`): can a model draw and read the shapes world?

Generation: for a fixed, seeded list of scenes the model draws each prompt; `classify` reads the
drawing's colour, position and shape back, and an image counts as right overall when all three
match. Understanding: the model is asked "What is in this image?" about each rendered scene
(greedy), and the answer must name the scene's colour, shape and position and no other.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..errors import SettingsError
from ..fileio import save_image, write_json
from ..pipeline import JanusLikePipeline
from .shapes import Scene, all_scenes, answer_matches, classify, render

AXES = ("color", "position", "shape")
QUESTION = "What is in this image?"


@dataclass
class ShapesResult:
    """Accuracies in [0, 1] and the per-scene details behind them."""

    generation: dict[str, float]
    chat: dict[str, float]
    samples: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        gen = " ".join(f"{k} {v:.1%}" for k, v in self.generation.items())
        chat = " ".join(f"{k} {v:.1%}" for k, v in self.chat.items())
        return f"generation: {gen}\nchat:       {chat}"


@dataclass
class ShapesEval:
    """Draw and describe `num_scenes` scenes (all 45 by default), in an order fixed by `seed`."""

    pipe: JanusLikePipeline
    num_scenes: int | None = None
    images_per_prompt: int = 4
    seed: int = 0
    cfg_scale: float | None = None  # None: the model's default guidance
    temperature: float = 1.0
    image_size: int = 64  # side of the rendered images the model is asked about

    def scenes(self) -> list[Scene]:
        scenes = all_scenes()
        random.Random(self.seed).shuffle(scenes)
        return scenes[: self.num_scenes]

    def run(self, progress: bool = True) -> tuple[ShapesResult, list[list[Image.Image]]]:
        """Scores and, per scene, the images drawn."""
        scenes = self.scenes()
        samples, drawings = [], []
        gen_hits = dict.fromkeys(AXES + ("overall",), 0)
        chat_hits = dict.fromkeys(AXES + ("overall",), 0)
        for i, scene in enumerate(tqdm(scenes, desc="ShapesEval", unit="scene", disable=not progress)):
            images = self.pipe.generate_images(scene.prompt, num_images=self.images_per_prompt,
                                               cfg_scale=self.cfg_scale, temperature=self.temperature,
                                               seed=self.seed + i)
            readings = [classify(im) for im in images]
            for reading in readings:
                right = {axis: getattr(reading, axis) == getattr(scene, axis) for axis in AXES}
                for axis in AXES:
                    gen_hits[axis] += right[axis]
                gen_hits["overall"] += all(right.values())
            answer = self.pipe.chat(QUESTION, images=[render(scene, self.image_size)], max_new_tokens=48)
            named = answer_matches(answer, scene)
            for axis in AXES:
                chat_hits[axis] += named[axis]
            chat_hits["overall"] += all(named.values())
            drawings.append(images)
            samples.append({"prompt": scene.prompt, "readings": [asdict(r) for r in readings], "answer": answer})
        n_images = len(scenes) * self.images_per_prompt
        return ShapesResult({k: v / n_images for k, v in gen_hits.items()},
                            {k: v / len(scenes) for k, v in chat_hits.items()}, samples), drawings


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


def eval_command(args: argparse.Namespace) -> int:
    """`janus-like eval shapes`: print the accuracies, write OUT/grid.png and OUT/results.json."""
    if args.num_scenes is not None and not 1 <= args.num_scenes <= len(all_scenes()):
        raise SettingsError(f"--num-scenes {args.num_scenes} is out of range; accepted: 1 to {len(all_scenes())}")
    if not 1 <= args.images_per_prompt <= 16:
        raise SettingsError(f"--images-per-prompt {args.images_per_prompt} is out of range; accepted: 1 to 16")
    pipe = JanusLikePipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    evaluation = ShapesEval(pipe, num_scenes=args.num_scenes, images_per_prompt=args.images_per_prompt,
                            seed=args.seed, cfg_scale=args.cfg_scale, temperature=args.temperature)
    result, drawings = evaluation.run()
    out = Path(args.out)
    grid = save_grid([s["prompt"] for s in result.samples], drawings, out / "grid.png")
    write_json(out / "results.json", asdict(result), indent=2)
    print(result.summary())
    print(f"wrote {grid} and {out / 'results.json'}")
    return 0
