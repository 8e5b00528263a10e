"""Generation settings: one dataclass for every mode, checked before any tensor is built."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from ..errors import SettingsError, is_int, is_number

MAX_IMAGES_PER_PROMPT = 64  # images of one call, all prompts together (each is a batch row, twice with CFG)
MAX_INTERLEAVED_IMAGES = 16  # images one interleaved answer may open
# logits / temperature and u + s·(c − u) run in float32: beyond these they overflow (or the sampled
# distribution is already a one-hot or uniform to float32 precision), so they are refused, not silently NaN
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 100.0
MAX_SCALE = 1000.0  # cfg_scale, image_cfg_scale, repetition_penalty
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer


@dataclass
class GenerationSettings:
    """Sampling and budget settings shared by text, image and interleaved generation.

    `temperature=0` is greedy (argmax) for text and image codes alike; `image_temperature`, when
    given, is the image codes' own (Chameleon samples text and images with separate settings: greedy
    words around drawn images). `top_k` and `top_p` apply to both heads; `repetition_penalty` and
    `stop` to text only. `cfg_scale` is the classifier-free guidance weight s of `u + s·(c − u)` for
    image codes (1 turns guidance off).
    `image_cfg_scale` is InstructPix2Pix's image weight s_I for drawing from input images:
    `u∅ + s_I·(u_I − u∅) + s·(c − u_I)` (1: the twin keeps the input images, u = u_I).
    `cfg_plausibility` α draws image codes only among those the conditional branch gives at least
    α of its top probability (`sampling.plausible`; 0: every code, as Janus).
    `max_new_tokens` counts tokens the text head samples (image codes and the forced
    `<end_of_image>` come on top); `max_images` is how many images a text row may open;
    `preview_every` decodes a preview image every that many codes (0: never)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    image_temperature: float | None = None  # None: `temperature`
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    cfg_scale: float = 5.0
    image_cfg_scale: float = 1.0
    cfg_plausibility: float = 0.0
    max_images: int = 0
    seed: int | None = None
    preview_every: int = 0
    ignore_eos: bool = False  # keep writing past <eos> (fixed-length runs for benchmarks)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        elif isinstance(self.stop, (list, tuple)) or self.stop is None:
            self.stop = tuple(self.stop or ())
        else:
            raise SettingsError(f"stop={self.stop!r} is not accepted; stop must be a string or a list of strings")
        self.validate()

    def validate(self) -> None:
        """Raise a SettingsError naming the first setting outside its accepted range."""

        def bad(name: str, value, accepted: str) -> SettingsError:
            return SettingsError(f"{name}={value!r} is not accepted; {name} must be {accepted}")

        # numpy and torch scalars are numbers too; booleans are not
        reals = ("temperature", "image_temperature", "top_p", "repetition_penalty")
        for name in (*reals, "cfg_scale", "image_cfg_scale", "cfg_plausibility"):
            setattr(self, name, _real(getattr(self, name)))
        for name in ("top_k", "max_new_tokens", "max_images", "preview_every", "seed"):
            setattr(self, name, _integer(getattr(self, name)))
        temperatures = f"0 (greedy) or a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]"
        if not _temperature(self.temperature):
            raise bad("temperature", self.temperature, temperatures)
        if self.image_temperature is not None and not _temperature(self.image_temperature):
            raise bad("image_temperature", self.image_temperature, f"None (the temperature's) or {temperatures}")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 1):
            raise bad("top_k", self.top_k, "None or an integer >= 1")
        if self.top_p is not None and (not _finite(self.top_p) or not 0 < self.top_p <= 1):
            raise bad("top_p", self.top_p, "None or a number in (0, 1]")
        if not _finite(self.repetition_penalty) or not 0 < self.repetition_penalty <= MAX_SCALE:
            raise bad(
                "repetition_penalty", self.repetition_penalty, f"a number in (0, {MAX_SCALE:g}] (1 means no penalty)"
            )
        if not _finite(self.cfg_scale) or not 0 <= self.cfg_scale <= MAX_SCALE:
            raise bad("cfg_scale", self.cfg_scale, f"a number in [0, {MAX_SCALE:g}] (1 means no guidance)")
        if not _finite(self.image_cfg_scale) or not 0 <= self.image_cfg_scale <= MAX_SCALE:
            raise bad(
                "image_cfg_scale",
                self.image_cfg_scale,
                f"a number in [0, {MAX_SCALE:g}] (1 means the input images are no separate guidance term)",
            )
        if not _finite(self.cfg_plausibility) or not 0 <= self.cfg_plausibility <= 1:
            raise bad("cfg_plausibility", self.cfg_plausibility, "a number in [0, 1] (0 means every code may be drawn)")
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise bad("max_new_tokens", self.max_new_tokens, "an integer >= 1")
        if not is_int(self.max_images) or not 0 <= self.max_images <= MAX_INTERLEAVED_IMAGES:
            raise bad("max_images", self.max_images, f"an integer in [0, {MAX_INTERLEAVED_IMAGES}]")
        if not is_int(self.preview_every) or self.preview_every < 0:
            raise bad("preview_every", self.preview_every, "an integer >= 0 (0 means no previews)")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise bad("seed", self.seed, "None (random) or an integer in [0, 2**63 - 1]")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", self.stop, "a list of non-empty strings")

    @property
    def code_temperature(self) -> float:
        """The temperature image codes are drawn at."""
        return self.temperature if self.image_temperature is None else self.image_temperature

    @property
    def guided(self) -> bool:
        """Whether image rows need an unconditional twin."""
        return self.cfg_scale != 1.0

    @property
    def image_guided(self) -> bool:
        """Whether rows drawn from input images need a third slot without those images."""
        return self.image_cfg_scale != 1.0


def check_sampling(**settings) -> None:
    """Refuse out-of-range settings before any weights are read (a None setting is left to its default)."""
    GenerationSettings(**{k: v for k, v in settings.items() if v is not None})


def check_num_images(num_images: int, prompts: int = 1) -> int:
    """`num_images` per prompt for `prompts` prompts: at least one, at most MAX_IMAGES_PER_PROMPT in all."""
    num_images = _integer(num_images)
    if not 1 <= prompts <= MAX_IMAGES_PER_PROMPT:
        raise SettingsError(
            f"{prompts} prompts were given; give 1 to {MAX_IMAGES_PER_PROMPT} prompts per call "
            f"({MAX_IMAGES_PER_PROMPT} images per call in all)"
        )
    if not is_int(num_images) or not 1 <= num_images * prompts <= MAX_IMAGES_PER_PROMPT:
        limit = MAX_IMAGES_PER_PROMPT // prompts
        each = "" if prompts == 1 else f" for {prompts} prompts ({MAX_IMAGES_PER_PROMPT} images per call in all)"
        raise SettingsError(
            f"num_images={num_images!r} is not accepted{each}; num_images must be an integer in [1, {limit}]"
        )
    return num_images


def _integer(x):
    """numpy/torch integer scalars -> int; anything else (booleans included) is left to be refused."""
    return int(x) if isinstance(x, numbers.Integral) and not isinstance(x, bool) else x


def _real(x):
    """numpy/torch real scalars -> float; anything else (booleans included) is left to be refused."""
    return float(x) if isinstance(x, numbers.Real) and not isinstance(x, bool) else x


def _finite(x) -> bool:
    return is_number(x) and math.isfinite(x)


def _temperature(t) -> bool:
    """0 (greedy) or within [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    return _finite(t) and (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE)
