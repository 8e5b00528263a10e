"""Evaluations (DESIGN.md §7): `janus-like eval shapes` scores a model on the shapes world."""

from .shapes_eval import ShapesEval, ShapesResult, eval_command

__all__ = ["ShapesEval", "ShapesResult", "eval_command"]
