"""Which held-out one-object scenes hold pixel patches that no training render holds?

The image tokenizer codes 8×8 patches, so a scene whose patches all occur in training renders can
be drawn from codes the model has drawn before; a patch no training image holds has no such code.
For each held-out (colour, shape, size) this prints its held-out places and, per patch side, how
many of its distinct patches occur in no training render (one-object and two-object, every
training scene). docs/default-model.md cites the result.

    python apps/default_model/unseen_patches.py
"""

from __future__ import annotations

from collections import defaultdict
from itertools import product

import numpy as np

from janus_like.evaluation.shapes import (
    COLORS,
    PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    Object,
    Scene,
    is_held_out,
    render,
    single_scenes,
)

PATCH_SIDES = (8, 4, 2)


def patches(scene: Scene, side: int) -> set[bytes]:
    """The scene's render cut into side×side patches on the tokenizer's grid."""
    pixels = np.asarray(render(scene))
    corners = range(0, pixels.shape[0], side)
    return {pixels[i : i + side, j : j + side].tobytes() for i in corners for j in corners}


def training_scenes() -> list[Scene]:
    """Every scene a training record may show: the seen one-object scenes and two-object scenes."""
    kinds = list(product(COLORS, SHAPES, SIZES))
    two = [
        Scene((Object(*a, place_a), Object(*b, place_b)))
        for place_a, place_b in PAIRS
        for a, b in product(kinds, kinds)
        if a[:2] != b[:2]
    ]
    return [s for s in single_scenes() + two if not is_held_out(s)]


def main() -> None:
    seen = {side: set() for side in PATCH_SIDES}
    for scene in training_scenes():
        for side in PATCH_SIDES:
            seen[side] |= patches(scene, side)
    places: dict[tuple, list[str]] = defaultdict(list)
    unseen: dict[tuple, dict[int, int]] = defaultdict(lambda: dict.fromkeys(PATCH_SIDES, 0))  # most over its places
    for scene in filter(is_held_out, single_scenes()):
        o = scene.object
        kind = (o.size, o.color, o.shape)
        places[kind].append(o.position)
        for side in PATCH_SIDES:
            unseen[kind][side] = max(unseen[kind][side], len(patches(scene, side) - seen[side]))
    print(f"{'held-out object':<24} {'held-out places':<36} " + " ".join(f"unseen {s}x{s}" for s in PATCH_SIDES))
    for kind in sorted(places, key=lambda k: (-unseen[k][8], k)):
        row = " ".join(f"{unseen[kind][s]:>10}" for s in PATCH_SIDES)
        print(f"{' '.join(kind):<24} {', '.join(places[kind]):<36} {row}")
    whole = [k for k in places if len(places[k]) == len(POSITIONS)]
    print(f"held out at every place (no training image holds one): {[' '.join(k) for k in whole]}")


if __name__ == "__main__":
    main()
