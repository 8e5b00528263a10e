"""The loss curve as a PNG (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..fileio import atomic_path  # noqa: E402


def plot_losses(history: list[dict], eval_history: list[dict], path: Path) -> None:
    """Training loss (total, text, image) and eval loss against the step; written atomically."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], label="loss", linewidth=1.5)
    for key, style in (("text_loss", ":"), ("image_loss", "--")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):  # None: the step had no such targets
            ax.plot(steps, [math.nan if v is None else v for v in values], style, label=key, linewidth=1)
    if eval_history:
        ax.plot([e["step"] for e in eval_history], [e["loss"] for e in eval_history], "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
