"""Generation settings: one dataclass for every mode, checked before any tensor is built."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import SettingsError

MAX_IMAGES_PER_PROMPT = 64  # images of one call, all prompts together (each is a batch row, twice with CFG)
MAX_INTERLEAVED_IMAGES = 16  # images one interleaved answer may open


@dataclass
class GenerationSettings:
    """Sampling and budget settings shared by text, image and interleaved generation.

    `temperature=0` is greedy (argmax) for text and image codes alike. `top_k`, `top_p` and the
    temperature apply to both heads; `repetition_penalty` and `stop` to text only. `cfg_scale` is
    the classifier-free guidance weight s of `u + s·(c − u)` for image codes (1 turns guidance off).
    `image_cfg_scale` is InstructPix2Pix's image weight s_I for drawing from input images:
    `u∅ + s_I·(u_I − u∅) + s·(c − u_I)` (1: the twin keeps the input images, u = u_I).
    `max_new_tokens` counts tokens the text head samples (image codes and the forced
    `<end_of_image>` come on top); `max_images` is how many images a text row may open; `preview_every` decodes a preview
    image every that many codes (0: never)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    cfg_scale: float = 5.0
    image_cfg_scale: float = 1.0
    max_images: int = 0
    seed: int | None = None
    preview_every: int = 0
    ignore_eos: bool = False  # keep writing past <eos> (fixed-length runs for benchmarks)

    def __post_init__(self) -> None:
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        self.validate()

    def validate(self) -> None:
        """Raise a SettingsError naming the first setting outside its accepted range."""
        def bad(name: str, value, accepted: str) -> SettingsError:
            return SettingsError(f"{name}={value!r} is not accepted; {name} must be {accepted}")

        if not _finite(self.temperature) or self.temperature < 0:
            raise bad("temperature", self.temperature, "a number >= 0 (0 means greedy)")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise bad("top_k", self.top_k, "None or an integer >= 1")
        if self.top_p is not None and (not _finite(self.top_p) or not 0 < self.top_p <= 1):
            raise bad("top_p", self.top_p, "None or a number in (0, 1]")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", self.repetition_penalty, "a number > 0 (1 means no penalty)")
        if not _finite(self.cfg_scale) or self.cfg_scale < 0:
            raise bad("cfg_scale", self.cfg_scale, "a number >= 0 (1 means no guidance)")
        if not _finite(self.image_cfg_scale) or self.image_cfg_scale < 0:
            raise bad("image_cfg_scale", self.image_cfg_scale, "a number >= 0 (1 means the input images are no "
                      "separate guidance term)")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise bad("max_new_tokens", self.max_new_tokens, "an integer >= 1")
        if not isinstance(self.max_images, int) or not 0 <= self.max_images <= MAX_INTERLEAVED_IMAGES:
            raise bad("max_images", self.max_images, f"an integer in [0, {MAX_INTERLEAVED_IMAGES}]")
        if not isinstance(self.preview_every, int) or self.preview_every < 0:
            raise bad("preview_every", self.preview_every, "an integer >= 0 (0 means no previews)")
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad("seed", self.seed, "None or an integer")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", self.stop, "a list of non-empty strings")

    @property
    def guided(self) -> bool:
        """Whether image rows need an unconditional twin."""
        return self.cfg_scale != 1.0

    @property
    def image_guided(self) -> bool:
        """Whether rows drawn from input images need a third slot without those images."""
        return self.image_cfg_scale != 1.0


def check_num_images(num_images: int, prompts: int = 1) -> None:
    """`num_images` per prompt for `prompts` prompts: at least one, at most MAX_IMAGES_PER_PROMPT in all."""
    if not 1 <= prompts <= MAX_IMAGES_PER_PROMPT:
        raise SettingsError(f"{prompts} prompts were given; give 1 to {MAX_IMAGES_PER_PROMPT} prompts per call "
                            f"({MAX_IMAGES_PER_PROMPT} images per call in all)")
    if not isinstance(num_images, int) or not 1 <= num_images * prompts <= MAX_IMAGES_PER_PROMPT:
        limit = MAX_IMAGES_PER_PROMPT // prompts
        each = "" if prompts == 1 else f" for {prompts} prompts ({MAX_IMAGES_PER_PROMPT} images per call in all)"
        raise SettingsError(f"num_images={num_images!r} is not accepted{each}; num_images must be an integer in "
                            f"[1, {limit}]")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
