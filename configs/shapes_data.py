"""Write the shapes world (janus_like.evaluation.shapes) as a training JSONL data set (docs/ARCHITECTURE.md §6).

Every scene gives a generation record, understanding records (one per question), a text record
and an interleaved record that draws and describes it; `interleaved` random pairs of scenes give
interleaved records that draw two scenes in turn (shapes.draw_request / draw_answer), and
`edits_per_scene` random edits of each scene give image + instruction -> image records; eval.jsonl
holds every 4th scene's records (the embedded default model trains on every scene: `holdout_every=0`).

    python configs/shapes_data.py data/shapes     # -> train.jsonl, eval.jsonl, imgs/*.png
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from janus_like.evaluation.shapes import QUESTIONS, Scene, all_scenes, draw_answer, draw_request, edits, render

VIEW_SIZES = (32, 48, 64, 96)  # sides of the understanding images, one per question


def scene_records(scene: Scene, image: str, views: list[str]) -> list[dict]:
    """Generation, understanding (every question, each about one of `views`: the scene rendered
    at several sizes, so that answers survive resampling) and text records about one scene."""
    records = [{"task": "generation", "prompt": scene.prompt, "image": image}]
    for question, view in zip(QUESTIONS, views):
        records.append(
            {
                "task": "understanding",
                "messages": [
                    {"role": "user", "content": [{"type": "image", "image": view}, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": scene.caption}]},
                ],
            }
        )
    records.append({"task": "text", "text": f"The {scene.color} {scene.shape} is {scene.prompt.split(' ', 3)[3]}."})
    return records


def interleaved_record(scenes: list[tuple[Scene, str]]) -> dict:
    """The request to draw one scene and describe it, or to draw two in turn, and its answer."""
    images = dict(scenes)
    segments = [
        {"type": "text", "text": part} if isinstance(part, str) else {"type": "image", "image": images[part]}
        for part in draw_answer([scene for scene, _ in scenes])
    ]
    return {"task": "interleaved", "prompt": draw_request([scene for scene, _ in scenes]), "segments": segments}


def edit_records(scene: Scene, views: list[str], images: dict[Scene, str], n: int, rng: random.Random) -> list[dict]:
    """`n` random single-attribute edits of a scene: one of its views + "make it blue" -> the edited
    scene's image."""
    return [
        {"task": "generation", "prompt": instruction, "input_images": [views[k % len(views)]], "image": images[target]}
        for k, (instruction, target) in enumerate(rng.sample(edits(scene), n))
    ]


def write_shapes(
    root: Path, size: int = 32, seed: int = 0, interleaved: int = 200, edits_per_scene: int = 0, holdout_every: int = 4
) -> dict[str, int]:
    """Write imgs/*.png, train.jsonl and eval.jsonl under `root` (eval: every `holdout_every`-th
    scene; 0 puts every scene in train and leaves eval empty); returns the record counts."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    views, images = {}, {}  # scene -> its understanding views at VIEW_SIZES; scene -> its generation image
    for scene in all_scenes():
        name = f"imgs/{scene.shape}_{scene.color}_{scene.position}"
        views[scene] = [f"{name}_{side}.png" for side in VIEW_SIZES]
        images[scene] = f"{name}_{size}.png" if size in VIEW_SIZES else f"{name}.png"
        for side, view in zip(VIEW_SIZES, views[scene]):
            render(scene, side).save(root / view)
        render(scene, size).save(root / images[scene])
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    for i, scene in enumerate(all_scenes()):
        held_out = holdout_every > 0 and i % holdout_every == holdout_every - 1
        rotated = views[scene][i % len(VIEW_SIZES) :] + views[scene][: i % len(VIEW_SIZES)]  # every size in turn
        split = splits["eval" if held_out else "train"]
        split.extend(scene_records(scene, images[scene], rotated))
        split.extend(edit_records(scene, rotated, images, edits_per_scene, rng))
    scenes = list(images.items())
    splits["train"].extend(interleaved_record([scene]) for scene in scenes)
    splits["train"].extend(interleaved_record(rng.sample(scenes, 2)) for _ in range(interleaved))
    for name, records in splits.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    counts = {name: len(records) for name, records in splits.items()}
    print(f"wrote {counts} records to {root}")
    return counts


if __name__ == "__main__":
    write_shapes(Path(sys.argv[1] if len(sys.argv) > 1 else "data/shapes"))
