"""Write the shapes world (janus_like.evaluation.shapes) as a training JSONL data set (DESIGN.md §6).

Every scene gives a generation record, understanding records (one per question), a text record,
and pairs of scenes give interleaved records; eval.jsonl holds every 4th scene's records
(the embedded default model trains on every scene: `holdout_every=0`).

    python configs/shapes_data.py data/shapes     # -> train.jsonl, eval.jsonl, imgs/*.png
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from janus_like.evaluation.shapes import QUESTIONS, Scene, all_scenes, render

VIEW_SIZES = (32, 48, 64, 96)  # sides of the understanding images, one per question


def scene_records(scene: Scene, image: str, views: list[str]) -> list[dict]:
    """Generation, understanding (every question, each about one of `views`: the scene rendered
    at several sizes, so that answers survive resampling) and text records about one scene."""
    records = [{"task": "generation", "prompt": scene.prompt, "image": image}]
    for question, view in zip(QUESTIONS, views):
        records.append({"task": "understanding", "messages": [
            {"role": "user", "content": [{"type": "image", "image": view}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": scene.caption}]}]})
    records.append({"task": "text", "text": f"The {scene.color} {scene.shape} is {scene.prompt.split(' ', 3)[3]}."})
    return records


def interleaved_record(first: tuple[Scene, str], second: tuple[Scene, str]) -> dict:
    """Two scenes drawn one after the other, each introduced by its caption."""
    (a, image_a), (b, image_b) = first, second
    return {"task": "interleaved", "segments": [
        {"type": "text", "text": f"Here is {a.prompt}:"}, {"type": "image", "image": image_a},
        {"type": "text", "text": f"And here is {b.prompt}:"}, {"type": "image", "image": image_b}]}


def write_shapes(root: Path, size: int = 32, seed: int = 0, interleaved: int = 64,
                 holdout_every: int = 4) -> dict[str, int]:
    """Write imgs/*.png, train.jsonl and eval.jsonl under `root` (eval: every `holdout_every`-th
    scene; 0 puts every scene in train and leaves eval empty); returns the record counts."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    scenes = []
    for i, scene in enumerate(all_scenes()):
        name = f"imgs/{scene.shape}_{scene.color}_{scene.position}"
        views = [f"{name}_{side}.png" for side in VIEW_SIZES]
        for side, view in zip(VIEW_SIZES, views):
            render(scene, side).save(root / view)
        image = views[VIEW_SIZES.index(size)] if size in VIEW_SIZES else f"{name}.png"
        render(scene, size).save(root / image)
        scenes.append((scene, image))
        held_out = holdout_every > 0 and i % holdout_every == holdout_every - 1
        rotated = views[i % len(views):] + views[: i % len(views)]  # every question meets every size
        splits["eval" if held_out else "train"].extend(scene_records(scene, image, rotated))
    rng = random.Random(seed)
    splits["train"].extend(interleaved_record(*rng.sample(scenes, 2)) for _ in range(interleaved))
    for name, records in splits.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    counts = {name: len(records) for name, records in splits.items()}
    print(f"wrote {counts} records to {root}")
    return counts


if __name__ == "__main__":
    write_shapes(Path(sys.argv[1] if len(sys.argv) > 1 else "data/shapes"))
