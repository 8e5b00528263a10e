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
        "--num-scenes",
        type=int,
        default=48,
        help="prompts per section and split (seen / held-out), 1 to 48 (default: %(default)s: every held-out "
        "one-object scene; 24 halves the time and doubles the noise)",
    )
    p.add_argument(
        "--images-per-prompt", type=int, default=2, help="images drawn per prompt, 1 to 16 (default: %(default)s)"
    )
    p.add_argument(
        "--guidance-scales",
        type=float,
        nargs="+",
        default=[1.0, 3.0, 5.0],
        help=f"the generation section's guidance sweep, each 0 to {MAX_SCALE:g} (default: %(default)s)",
    )
    p.add_argument(
        "--image-cfg-scale",
        type=float,
        default=None,
        help=f"image guidance of the edit section, 0 to {MAX_SCALE:g} (default: 1, no separate term)",
    )


EVALUATIONS: dict[str, Evaluation] = {
    "shapes": Evaluation(
        "ShapesEval v2: generation, chat, edits and interleaving on seen and held-out combinations of the shapes world",
        _shapes_arguments,
        "janus_like.evaluation.shapes_eval:eval_command",
    ),
}
