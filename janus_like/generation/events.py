"""Events the engine yields while it generates; the CLI, the pipeline and the demo consume them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image


@dataclass
class TextDelta:
    """New text of one row (held back while it could still turn into a stop string)."""

    row: int
    text: str


@dataclass
class ImageProgress:
    """Row `row` has sampled `done` of `total` codes of its image number `index`."""

    row: int
    index: int
    done: int
    total: int
    preview: Image.Image | None = None


@dataclass
class ImageDone:
    """A finished image: the decoded picture and its VQ codes (row-major grid)."""

    row: int
    index: int
    image: Image.Image
    codes: torch.Tensor


@dataclass
class RowResult:
    """Everything one row produced. `parts` interleaves text and images in order; `token_ids`
    are the generated ids as fed back (text ids, image codes, the forced `<end_of_image>`)."""

    parts: list = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    codes: list[torch.Tensor] = field(default_factory=list)
    finish_reason: str = ""
    seed: int | None = None  # the request's seed (drawn when none was given), set by the scheduler

    @property
    def text(self) -> str:
        return "".join(p for p in self.parts if isinstance(p, str))

    @property
    def images(self) -> list[Image.Image]:
        return [p for p in self.parts if isinstance(p, Image.Image)]


@dataclass
class Done:
    """The end of a run: one result per request, in order."""

    results: list[RowResult]


Event = TextDelta | ImageProgress | ImageDone | Done
