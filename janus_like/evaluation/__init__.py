"""Evaluations, each one entry of EVALUATIONS: `janus-like eval NAME` gives every entry the common
options (model, sampling, --out) plus its own, and runs its handler. This module stays light (the
command line imports it to build --help); an evaluation's code loads only when it runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from ..generation.settings import MAX_SCALE


@dataclass(frozen=True)
class Evaluation:
    """How the command line offers one evaluation."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]  # its own options
    handler: str  # "module:function", called with the parsed arguments; imported only when it runs


def _shapes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-scenes", type=int, default=None, help="the first N scenes of the seeded order, 1 to 45 (default: all 45)"
    )
    p.add_argument(
        "--images-per-prompt", type=int, default=4, help="images drawn per scene, 1 to 16 (default: %(default)s)"
    )
    p.add_argument(
        "--image-cfg-scale",
        type=float,
        default=None,
        help=f"image guidance of the edit section, 0 to {MAX_SCALE:g} (default: 1, no separate term)",
    )


EVALUATIONS: dict[str, Evaluation] = {
    "shapes": Evaluation(
        "ShapesEval: generation, chat, interleaving and edits on the shapes world",
        _shapes_arguments,
        "janus_like.evaluation.shapes_eval:eval_command",
    ),
}
