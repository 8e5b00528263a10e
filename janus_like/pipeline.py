"""`JanusLikePipeline`: the public one-call API of docs/ARCHITECTURE.md §4 on top of the generation engine."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence

import torch
from PIL import Image

from .checkpoint.options import check_device, resolve_dtype
from .errors import PromptError, SettingsError
from .generation import Done, Event, GenerationEngine, GenerationSettings, Request
from .generation.engine import IMAGE_MODE, TEXT_MODE
from .generation.scheduler import Scheduler, check_max_batch
from .generation.settings import check_num_images
from .hardware import warn_if_slow_on_cpu
from .modeling import JanusLikeForConditionalGeneration
from .processor import JanusLikeProcessor, TokenSequence

ImageLike = str | os.PathLike | Image.Image
MODES = ("images", "chat", "interleave")
IMAGES_PER_PROMPT = 4  # generate_images' and stream(mode="images")'s default
# what `chat` and `interleave` default to and `stream(mode=…)` too, so that streaming a mode behaves like
# its one-call method (GenerationSettings' own defaults would sample chat answers and never open an image)
MODE_DEFAULTS = {
    "chat": {"temperature": 0.0, "max_new_tokens": 256},
    "interleave": {"max_new_tokens": 512, "max_images": 4},
}


class JanusLikePipeline:
    """Text and images in, text, images or both out. Every call goes through one scheduler, so
    calls from many threads share decode steps. With `compile=True` calls run instead one at a time
    on `engine`, whose decode step is compiled (CUDA graphs of one static batch); the scheduler's
    steps run eagerly (docs/serving.md, "The scheduler")."""

    def __init__(
        self,
        model: JanusLikeForConditionalGeneration,
        processor: JanusLikeProcessor,
        compile: bool = False,
        max_batch: int = 32,
    ):
        """`max_batch`: KV-cache rows shared by concurrent calls (a guided image takes 2, an
        image edit with image_cfg_scale 3)."""
        self.model = model.eval()
        warn_if_slow_on_cpu(model.dtype, model.device)
        self.processor = processor
        self.scheduler = Scheduler(model, processor, max_batch=max_batch)
        self.engine = GenerationEngine(model, processor, compile=compile)
        self.compile = compile
        self._engine_lock = threading.Lock()  # the compiled engine serves one call at a time
        self.default_cfg_scale = model.config.default_cfg_scale  # the guidance the model was tuned for
        self.default_cfg_plausibility = model.config.default_cfg_plausibility

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        compile: bool = False,
        chat_roles: str | tuple[str, str] | None = None,
        check_weights: bool = False,
        max_batch: int = 32,
    ) -> JanusLikePipeline:
        """Load a model and its processor (any supported layout; no path: the embedded default).
        Defaults: CUDA when available in bfloat16, else CPU in float32. `chat_roles` overrides the
        chat roles: a release ("janus-pro", "janus-1.3b", "janusflow") or a (user, assistant) pair.
        `check_weights`: refuse weights holding NaN or infinity (reads every weight once more).
        `max_batch`: the KV-cache rows that concurrent calls share (a guided image takes 2)."""
        check_max_batch(max_batch)  # before loading anything
        device = _device(device)
        dtype = _dtype(dtype, device)
        model = JanusLikeForConditionalGeneration.from_pretrained(
            path, dtype=dtype, device=device, chat_roles=chat_roles, check_weights=check_weights
        )
        processor = JanusLikeProcessor.from_pretrained(path, model.config)
        return cls(model, processor, compile=compile, max_batch=max_batch)

    # ------------------------------------------------------------------ one-call API

    def generate_images(
        self,
        prompt: str | Sequence[str],
        num_images: int = IMAGES_PER_PROMPT,
        cfg_scale: float | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        images: Sequence[ImageLike] | None = None,
        preview_every: int = 0,
        image_cfg_scale: float | None = None,
        cfg_plausibility: float | None = None,
    ) -> list[Image.Image] | list[list[Image.Image]]:
        """Text (+ input images, for edits and variations) -> `num_images` images. A list of
        prompts is drawn in one batch and gives a list of image lists, one per prompt (the input
        images, if any, go with every prompt). `cfg_scale=None`: the model config's
        `default_cfg_scale` (5.0 for Janus). `image_cfg_scale` weighs the input images apart
        (InstructPix2Pix; default 1: no separate term). `cfg_plausibility=None`: the config's
        `default_cfg_plausibility` (GenerationSettings; 0 for Janus)."""
        done = _last(
            self.stream(
                prompt,
                mode="images",
                num_images=num_images,
                cfg_scale=cfg_scale,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                images=images,
                preview_every=preview_every,
                image_cfg_scale=image_cfg_scale,
                cfg_plausibility=cfg_plausibility,
            )
        )
        drawn = [image for result in done.results for image in result.images]
        if isinstance(prompt, str):
            return drawn
        per_prompt = len(drawn) // len(prompt)  # num_images, or its default when None
        return [drawn[i : i + per_prompt] for i in range(0, len(drawn), per_prompt)]

    def chat(
        self,
        prompt: str | list[dict],
        images: Sequence[ImageLike] | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        system_prompt: str | None = None,
    ) -> str:
        """A question (+ images), or HF-style multimodal messages -> the assistant's answer."""
        done = _last(
            self.stream(
                prompt,
                mode="chat",
                images=images,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                stop=stop,
                seed=seed,
                system_prompt=system_prompt,
            )
        )
        return done.results[0].text.strip()

    def interleave(
        self,
        prompt: str | list[dict],
        seed: int | None = None,
        max_new_tokens: int = 512,
        max_images: int = 4,
        cfg_scale: float | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        images: Sequence[ImageLike] | None = None,
        cfg_plausibility: float | None = None,
        image_temperature: float | None = None,
    ) -> list[str | Image.Image]:
        """Text (+ images) -> text and images in the order the model wrote them. `temperature` samples
        both; `image_temperature` (None: `temperature`) the images alone, e.g. greedy words (0) around
        drawn images (1)."""
        done = _last(
            self.stream(
                prompt,
                mode="interleave",
                seed=seed,
                max_new_tokens=max_new_tokens,
                max_images=max_images,
                cfg_scale=cfg_scale,
                cfg_plausibility=cfg_plausibility,
                temperature=temperature,
                image_temperature=image_temperature,
                top_k=top_k,
                top_p=top_p,
                images=images,
            )
        )
        return done.results[0].parts

    def stream(
        self,
        prompt: str | list[dict],
        mode: str = "chat",
        *,
        images: Sequence[ImageLike] | None = None,
        num_images: int | None = None,
        system_prompt: str | None = None,
        **settings,
    ) -> Iterator[Event]:
        """The engine's events (TextDelta, ImageProgress, ImageDone, Done) for one prompt (or, for
        "images", a list of prompts: rows prompt after prompt, `num_images` each). `mode` is
        "images", "chat" or "interleave"; `settings` are GenerationSettings fields. Thread-safe:
        concurrent calls share decode steps; bad input raises here; closing (or dropping) the
        returned iterator cancels its rows. Rows beyond the free slots wait for them."""
        if mode not in MODES:
            raise SettingsError(f"mode={mode!r} is not accepted; mode must be one of {', '.join(MODES)}")
        if mode != "images" and num_images not in (None, 1):
            raise SettingsError(f"num_images={num_images!r} applies to mode='images'; {mode} writes one answer")
        names = [f.name for f in dataclasses.fields(GenerationSettings)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise SettingsError(
                f"unknown setting {', '.join(map(repr, unknown))}; accepted: {', '.join(names)}, "
                "images, num_images, system_prompt"
            )
        if isinstance(images, (str, os.PathLike, Image.Image)):  # one image rather than a list of them
            images = [images]
        settings = {k: v for k, v in settings.items() if v is not None}
        defaults = {"cfg_scale": self.default_cfg_scale, "cfg_plausibility": self.default_cfg_plausibility}
        settings = {**defaults, **MODE_DEFAULTS.get(mode, {}), **settings}
        if mode == "images":
            prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
            num_images = check_num_images(IMAGES_PER_PROMPT if num_images is None else num_images, len(prompts))
            sequences = [self.processor.generation_prompt(check_prompt(p), list(images or [])) for p in prompts]
            requests = [Request(sequence, IMAGE_MODE) for sequence in sequences for _ in range(num_images)]
        else:
            sequence = self._conversation(prompt, images, "" if mode == "interleave" else system_prompt)
            requests = [Request(sequence, TEXT_MODE)]
            if mode == "chat":
                settings["max_images"] = 0
        generation = GenerationSettings(**settings)
        if mode == "chat":  # an answer ends where the next user turn would begin, whatever other stops are given:
            # its header "User:" (DeepSeek's deepseek_old template stops there; a bare "User" is a common word)
            generation.stop = (*generation.stop, f"{self.processor.config.user_role}:")
        if not self.compile:
            return self.scheduler.submit(requests, generation)
        self._engine_lock.acquire()
        try:
            return _Exclusive(self.engine.stream(requests, generation), self._engine_lock)
        except BaseException:
            self._engine_lock.release()
            raise

    def _conversation(
        self, prompt: str | list[dict], images: Sequence[ImageLike] | None, system_prompt: str | None
    ) -> TokenSequence:
        if isinstance(prompt, str):
            content = [{"type": "image", "image": im} for im in images or []]
            messages = [{"role": "user", "content": content + [{"type": "text", "text": check_prompt(prompt)}]}]
        elif isinstance(prompt, list) and prompt:
            if images:
                raise PromptError("pass images inside the messages' content, not as images=, when giving messages")
            messages = prompt
        else:
            raise PromptError(
                f"the prompt must be a non-empty string or a list of messages, got {type(prompt).__name__}"
            )
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise PromptError(
                f"system_prompt must be a string (or None for the model's own), got {type(system_prompt).__name__}"
            )
        return self.processor.conversation(messages, system_prompt=system_prompt)


class _Exclusive:
    """An engine call's events that hold `lock` until they end, fail or are closed (or dropped)."""

    def __init__(self, events: Iterator[Event], lock: threading.Lock):
        self._events, self._lock = events, lock

    def __iter__(self) -> _Exclusive:
        return self

    def __next__(self) -> Event:
        try:
            return next(self._events)
        except BaseException:  # StopIteration included: the call is over
            self.close()
            raise

    def close(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            self._events.close()
            lock.release()

    __del__ = close


def check_prompt(prompt) -> str:
    """A prompt string with some text in it."""
    if not isinstance(prompt, str):
        raise PromptError(f"the prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise PromptError("the prompt is empty; give some text (a non-empty string)")
    return prompt


def _last(events: Iterator[Event]) -> Done:
    for event in events:
        if isinstance(event, Done):
            return event
    raise RuntimeError("generation ended without a Done event")


def _device(device: str | torch.device | None) -> torch.device:
    """The device asked for (default: CUDA when available), if this machine has it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(device))


def _dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype | None:
    """The weights' dtype (default: bfloat16 on CUDA, float32 elsewhere), checked as every loader checks it."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return resolve_dtype(dtype)
