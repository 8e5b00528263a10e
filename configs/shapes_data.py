"""Write a small shapes data set in the training JSONL format (DESIGN.md §6) for smoke runs.

    python configs/shapes_data.py data/shapes     # -> train.jsonl, eval.jsonl, imgs/*.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from janus_like.testing import shape_image


def write_shapes(root: Path, size: int = 64) -> None:
    """Generation, understanding and text records about coloured shapes; eval = every 4th shape."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    shapes = [(s, c, p) for s in ("circle", "square") for c in ("red", "blue", "green", "orange")
              for p in ("left", "center", "right")]
    for i, (shape, color, pos) in enumerate(shapes):
        image = f"imgs/{shape}_{color}_{pos}.png"
        shape_image(shape, color, size=size, position=pos).save(root / image)
        split = splits["eval" if i % 4 == 3 else "train"]
        split.append({"task": "generation", "prompt": f"a {color} {shape} on the {pos}", "image": image})
        split.append({"task": "understanding", "messages": [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"A {color} {shape} on the {pos}."}]}]})
        split.append({"task": "text", "text": f"The {color} {shape} is on the {pos}."})
    for name, records in splits.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {sum(map(len, splits.values()))} records to {root}")


if __name__ == "__main__":
    write_shapes(Path(sys.argv[1] if len(sys.argv) > 1 else "data/shapes"))
