"""Text + image processing and the sequence layout of docs/ARCHITECTURE.md §2.

A sample becomes one token stream in which every position carries a modality (text,
understanding image, generation image) and a flag saying whether it is a training target.
Prompts follow DeepSeek's SFT template exactly, so Janus checkpoints see what they were trained on:

    {system}\n\n<|User|>: <begin_of_image>[u × 576]<end_of_image>\n{question}\n\n<|Assistant|>: {answer}<eos>
    <|User|>: {prompt}\n\n<|Assistant|>:<begin_of_image>[g × 576]<end_of_image>
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from .checkpoint import OWN, ForeignCheckpoint, detect_layout, model_dir, open_checkpoint
from .checkpoint.options import resolve_chat_roles
from .checkpoint.settings import JANUS_MEAN, channels, load_tokenizer, read_json
from .configuration import JanusLikeConfig
from .errors import DataError, JanusLikeError, PromptError
from .images import generation_pixels, load_image, understanding_pixels
from .layout import (
    GEN_IMAGE,
    IGNORE_INDEX,
    TASKS,
    TEXT,
    UND_IMAGE,
    TokenSequence,
    fill_special_token_ids,
    special_token_ids,
)

ROLES = ("system", "user", "assistant")
PROCESSOR_CONFIG_NAME = "processor_config.json"
MAX_CHARS_PER_POSITION = 32  # far more characters than tokenizers pack into one token


class JanusLikeProcessor:
    """Tokenizer + image preprocessing + chat template + batching for `JanusLikeForConditionalGeneration`."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: JanusLikeConfig,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        do_normalize: bool = True,
        literal_user_text: bool = False,
    ):
        self.tokenizer = tokenizer
        # False (DeepSeek's behaviour): a control-token string in a prompt, message or record, such as
        # `<begin_of_image>`, becomes that token; True: text a user wrote stays text (the template's tokens stay)
        self.literal_user_text = literal_user_text
        self.config = config
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.do_normalize = do_normalize
        self.image_size = config.vision_config.image_size
        self.num_image_tokens = config.num_image_tokens
        self.num_gen_tokens = config.num_gen_tokens
        ids = special_token_ids(tokenizer, config)
        self.image_start_id, self.image_end_id = ids["image_start_token_id"], ids["image_end_token_id"]
        self.image_token_id, self.pad_id = ids["image_token_id"], ids["pad_token_id"]
        self.bos_id, self.eos_id = ids["bos_token_id"], ids["eos_token_id"]

    # ---------------------------------------------------------------- construction and saving

    def fill_token_ids(self, config: JanusLikeConfig) -> None:
        """Record the special-token ids this tokenizer gives (by name) in a model config."""
        config.image_start_token_id, config.image_end_token_id = self.image_start_id, self.image_end_id
        config.image_token_id, config.pad_token_id = self.image_token_id, self.pad_id
        config.bos_token_id, config.eos_token_id = self.bos_id, self.eos_id

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        config: JanusLikeConfig | None = None,
        chat_roles: str | tuple[str, str] | None = None,
    ) -> JanusLikeProcessor:
        """Load the tokenizer and processor settings saved beside a model (any supported layout;
        no path: the embedded default model's). `chat_roles` overrides the chat roles: a release
        ("janus-pro", "janus-1.3b", "janusflow") or a (user, assistant) pair."""
        roles = resolve_chat_roles(chat_roles)
        path = model_dir(path)
        if config is not None:
            if roles is not None:
                config = copy.deepcopy(config)
                config.user_role, config.assistant_role = roles
            roles = config.user_role, config.assistant_role  # the given config's: no release to tell
        if detect_layout(path) == OWN:
            roles_fields = {} if roles is None else {"user_role": roles[0], "assistant_role": roles[1]}
            return cls.from_dir(path, config or JanusLikeConfig.from_pretrained(path, **roles_fields))
        checkpoint = open_checkpoint(path, roles)
        if config is not None:
            fill_special_token_ids(config, checkpoint.tokenizer)
            checkpoint.config = config
        return cls.from_checkpoint(checkpoint)

    @classmethod
    def from_checkpoint(cls, checkpoint: ForeignCheckpoint) -> JanusLikeProcessor:
        """The processor of an opened DeepSeek or transformers Janus checkpoint."""
        images = checkpoint.images
        return cls(checkpoint.tokenizer, checkpoint.config, images.image_mean, images.image_std, images.do_normalize)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        settings = {
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_normalize": self.do_normalize,
            "processor_class": type(self).__name__,
        }
        (path / PROCESSOR_CONFIG_NAME).write_text(json.dumps(settings, indent=2))

    @classmethod
    def from_dir(cls, path: str | os.PathLike, config: JanusLikeConfig) -> JanusLikeProcessor:
        """This package's own layout: tokenizer files + processor_config.json beside config.json."""
        path = Path(path)
        settings = read_json(path / PROCESSOR_CONFIG_NAME)
        mean = channels(settings.get("image_mean", JANUS_MEAN), f"{PROCESSOR_CONFIG_NAME} image_mean")
        std = channels(settings.get("image_std", JANUS_MEAN), f"{PROCESSOR_CONFIG_NAME} image_std", positive=True)
        return cls(load_tokenizer(path), config, mean, std, bool(settings.get("do_normalize", True)))

    # ---------------------------------------------------------------- text pieces

    def encode_text(self, text: str, literal: bool = False) -> list[int]:
        """Tokenise without adding BOS/EOS; special-token strings inside `text` become their ids,
        unless `literal` (then they are tokenised as the plain text they are written as)."""
        check_unicode(text, PromptError)
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=literal) if text else []

    def encode_pieces(self, pieces: list[tuple[str, bool]]) -> list[int]:
        """Tokenise text pieces as one text (BPE merges across pieces kept); with `literal_user_text`,
        special-token strings count only in the pieces not flagged as user-written."""
        text = "".join(piece for piece, _ in pieces)
        if not self.literal_user_text or not any(user for _, user in pieces):
            return self.encode_text(text)
        specials = {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}
        ids, plain = [], ""
        for piece, user in pieces:
            for part in [piece] if user else _special_split(piece, specials):
                if not user and part in specials:
                    ids += self.encode_text(plain, literal=True) + [self.tokenizer.convert_tokens_to_ids(part)]
                    plain = ""
                else:
                    plain += part
        return ids + self.encode_text(plain, literal=True)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---------------------------------------------------------------- images

    def understanding_pixels(self, image) -> torch.Tensor:
        return understanding_pixels(
            load_image(image), self.image_size, self.image_mean, self.image_std, self.do_normalize
        )

    def generation_pixels(self, image) -> torch.Tensor:
        return generation_pixels(load_image(image), self.config.gen_image_size)

    def add_und_image(self, b: SequenceBuilder, image) -> None:
        """`<begin_of_image>` + N SigLIP placeholders + `<end_of_image>`; never trained."""
        b.seq.und_pixels.append(self.understanding_pixels(image))
        b.ids([self.image_start_id], TEXT, False)
        b.ids([self.image_token_id] * self.num_image_tokens, UND_IMAGE, False)
        b.ids([self.image_end_id], TEXT, False)

    def add_gen_image(self, b: SequenceBuilder, image, train_start: bool) -> None:
        """`<begin_of_image>` (a target only where the model must decide to draw) + N VQ codes
        (targets; filled in by the model's VQ encoder) + `<end_of_image>` (forced, never trained)."""
        b.seq.gen_pixels.append(self.generation_pixels(image))
        b.ids([self.image_start_id], TEXT, train_start)
        b.ids([0] * self.num_gen_tokens, GEN_IMAGE, True)
        b.ids([self.image_end_id], TEXT, False)

    # ---------------------------------------------------------------- chat template

    def _add_content(self, b: SequenceBuilder, items: list[dict], trainable: bool) -> None:
        """Content items laid out by `_joined`: text as is, images as understanding spans."""
        for item in items:
            if item["type"] == "text":
                b.text(item["text"], trainable, user=True)
            else:
                self.add_und_image(b, _image_of(item))

    def _conversation(
        self, b: SequenceBuilder, messages: list[dict], system_prompt: str | None, add_generation_prompt: bool
    ) -> None:
        cfg = self.config
        system = cfg.system_prompt if system_prompt is None else system_prompt
        system_by_user = system_prompt is not None  # the model's own system prompt is part of the template
        if not isinstance(messages, (list, tuple)):
            raise b.error(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {_short(messages)}")
        turns = []
        for message in messages:
            role, items = _checked_message(message, b.error)
            if role == "system":
                if any(item["type"] != "text" for item in items):
                    raise b.error("a system message takes text only (a string or text items), not images")
                system, system_by_user = "".join(item["text"] for item in items), True
            else:
                turns.append((role, items))
        _check_turns(turns, add_generation_prompt, b.error)
        b.ids([self.bos_id], TEXT, False)
        if system:
            b.text(system, False, user=system_by_user)
            b.text(cfg.turn_separator, False)
        for role, items in turns:
            items = _joined(items)
            if role == "user":
                b.text(f"{cfg.user_role}: ", False)
                self._add_content(b, items, False)
                b.text(cfg.turn_separator, False)
            else:
                b.text(f"{cfg.assistant_role}:", False)
                self._add_content(b, _prefix_space(items), True)
                b.ids([self.eos_id], TEXT, True)
        if add_generation_prompt:
            b.text(f"{cfg.assistant_role}:", False)

    def conversation(
        self, messages: list[dict], system_prompt: str | None = None, add_generation_prompt: bool = True
    ) -> TokenSequence:
        """DeepSeek SFT format. Assistant turns are targets (` {answer}<eos>`); the rest is prompt.
        With `add_generation_prompt` the last message must be the user's and the sequence ends with
        `<|Assistant|>:` ready for the answer."""
        b = SequenceBuilder(self, PromptError)
        self._conversation(b, messages, system_prompt, add_generation_prompt)
        return b.done()

    def generation_prompt(self, prompt: str, images: Sequence | None = None) -> TokenSequence:
        """Janus text-to-image prompt, no system prompt, ending in `<begin_of_image>`; input images
        (for edits and variations) go before the instruction like an understanding turn."""
        if not isinstance(prompt, str):
            raise PromptError(f"the prompt must be a string, got {_short(prompt)}")
        b = SequenceBuilder(self, PromptError)
        self._generation_prompt(b, prompt, _image_list(images, "images", PromptError))
        b.ids([self.image_start_id], TEXT, False)
        return b.done()

    def _generation_prompt(self, b: SequenceBuilder, prompt: str, images: list) -> None:
        content: list[dict] = [{"type": "image", "image": im} for im in images]
        content.append({"type": "text", "text": prompt})
        self._conversation(b, [{"role": "user", "content": content}], "", True)

    def unconditional(self, seq: TokenSequence, keep_images: bool = False) -> TokenSequence:
        """Janus's unconditional twin: every position but the first and the last becomes the pad
        token. With `keep_images`, understanding-image spans are kept (image-only condition)."""
        out = TokenSequence(und_pixels=list(seq.und_pixels) if keep_images else [])
        last = len(seq) - 1
        for i, (tok, mod) in enumerate(zip(seq.ids, seq.modality)):
            keep = i == 0 or i == last or (keep_images and _in_image_span(seq, i))
            out.add([tok if keep else self.pad_id], mod if keep else TEXT, False)
        return out

    # ---------------------------------------------------------------- training records

    def record_to_sequence(
        self, record: dict, base_dir: str | os.PathLike = ".", drop_prompt: bool = False, drop_images: bool = False
    ) -> TokenSequence:
        """A JSONL record of docs/ARCHITECTURE.md §6 -> TokenSequence. `drop_prompt` replaces a generation
        prompt by the unconditional one (CFG training), keeping its input images like the engine's
        twin; with `drop_images` too they go as well, like the engine's third slot for
        `image_cfg_scale` (InstructPix2Pix)."""
        if not isinstance(record, dict):
            raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
        task = record.get("task")
        base = Path(base_dir)

        def image_at(value):
            if isinstance(value, Image.Image):
                return value
            if not isinstance(value, str) or not value:
                raise DataError(f"an image must be a path string, got {value!r}")
            return base / value

        b = SequenceBuilder(self, DataError)
        if task == "understanding":
            messages = record.get("messages")
            if not isinstance(messages, list) or not messages:
                raise DataError("an understanding record needs a non-empty 'messages' list")
            self._conversation(b, [_resolve_images(m, image_at) for m in messages], None, False)
        elif task == "generation":
            prompt, image = record.get("prompt"), record.get("image")
            if not isinstance(prompt, str) or not prompt or image is None:
                raise DataError("a generation record needs a non-empty 'prompt' string and an 'image' path")
            inputs = _image_list(record.get("input_images"), "'input_images'", DataError)
            self._generation_prompt(b, prompt, [image_at(p) for p in inputs])
            if drop_prompt:  # the engine's twin: BOS, input images kept (unless dropped), pads up to <begin_of_image>
                b.flush()
                b.seq = self.unconditional(b.seq, keep_images=not drop_images)
                b.seq.ids[-1] = self.pad_id
            self.add_gen_image(b, image_at(image), train_start=False)
        elif task == "interleaved":
            segments = record.get("segments")
            if not isinstance(segments, list) or not segments:
                raise DataError("an interleaved record needs a non-empty 'segments' list")
            prompt = record.get("prompt")
            if prompt is not None and not isinstance(prompt, (str, list)):
                raise DataError(
                    f"an interleaved record's 'prompt' must be a string or a list of content items, "
                    f"got {_short(prompt)}"
                )
            if prompt is not None:
                self._conversation(b, [{"role": "user", "content": prompt}], "", True)
            else:
                b.ids([self.bos_id], TEXT, False)
            for segment in segments:
                kind = segment.get("type") if isinstance(segment, dict) else None
                if kind == "text":
                    if not isinstance(segment.get("text"), str):
                        raise DataError(f"a text segment needs a 'text' string, got {_short(segment.get('text'))}")
                    b.text(segment["text"], True, user=True)
                elif kind == "image":
                    self.add_gen_image(b, image_at(segment.get("image")), train_start=True)
                else:
                    raise DataError(f"unknown segment {segment!r}; accepted types: text, image")
            b.ids([self.eos_id], TEXT, True)
        elif task == "text":
            text = record.get("text")
            if not isinstance(text, str) or not text:
                raise DataError("a text record needs a non-empty 'text' string")
            b.ids([self.bos_id], TEXT, False)
            b.text(text, True, user=True)
            b.ids([self.eos_id], TEXT, True)
        else:
            raise DataError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
        return b.done()

    def check_length(self, seq: TokenSequence, extra: int = 0) -> None:
        limit = self.config.text_config.max_position_embeddings
        if len(seq) + extra > limit:
            raise PromptError(
                f"the sequence needs {len(seq) + extra} positions but the model's context holds "
                f"{limit}; shorten the prompt or use fewer images"
            )

    def collate(
        self,
        sequences: Sequence[TokenSequence],
        pad_to_multiple_of: int | None = None,
        check_length: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Right-pad a list of sequences into batch tensors; labels are -100 where not a target.
        `check_length=False` for packed rows, whose positions restart: their samples are checked."""
        for seq in sequences if check_length else ():
            self.check_length(seq)
        length = max(len(s) for s in sequences)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        batch = len(sequences)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        modality = torch.full((batch, length), TEXT, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            n = len(seq)
            ids = torch.tensor(seq.ids, dtype=torch.long)
            input_ids[row, :n] = ids
            modality[row, :n] = torch.tensor(seq.modality, dtype=torch.long)
            labels[row, :n] = torch.where(torch.tensor(seq.trainable), ids, IGNORE_INDEX)
            attention_mask[row, :n] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "modality": modality, "labels": labels}
        und = [p for s in sequences for p in s.und_pixels]
        gen = [p for s in sequences for p in s.gen_pixels]
        if und:
            out["pixel_values"] = torch.stack(und)
        if gen:
            out["gen_pixel_values"] = torch.stack(gen)
        return out

    def __call__(
        self,
        records: Sequence[dict],
        base_dir: str | os.PathLike = ".",
        cfg_dropout: float = 0.0,
        rng: random.Random | None = None,
    ) -> dict[str, torch.Tensor]:
        """JSONL records -> a padded training batch."""
        rng = rng or random.Random()
        seqs = [
            self.record_to_sequence(
                r, base_dir, drop_prompt=r.get("task") == "generation" and rng.random() < cfg_dropout
            )
            for r in records
        ]
        return self.collate(seqs)


class SequenceBuilder:
    """Accumulates text so that adjacent text with the same target flag is tokenised in one call
    (tokenising piece by piece would split BPE merges and differ from DeepSeek's prompts)."""

    def __init__(self, processor: JanusLikeProcessor, error: type[JanusLikeError] = PromptError):
        self.processor = processor
        self.error = error  # DataError while reading a training record, PromptError for a prompt
        self.seq = TokenSequence()
        self._pieces: list[tuple[str, bool]] = []  # (text, written by the user) awaiting tokenisation
        self._trainable = False
        self._characters = 0

    def text(self, text: str, trainable: bool, user: bool = False) -> None:
        """Add text; `user`: written by the user (a prompt, message or record), not the template."""
        if not text:
            return
        self._check_size(len(text))
        check_unicode(text, self.error)
        if self._pieces and trainable != self._trainable:
            self.flush()
        self._pieces.append((text, user))
        self._trainable = trainable

    def _check_size(self, more: int) -> None:
        """Refuse text that cannot fit the context before it is tokenised (tokenising megabytes takes
        a minute: a cheap way to tie up a server)."""
        self._characters += more
        context = self.processor.config.text_config.max_position_embeddings
        limit = context * MAX_CHARS_PER_POSITION
        if self._characters > limit:
            raise self.error(
                f"the text has {self._characters:,} characters, more than the model's context of "
                f"{context} tokens can hold (at most {limit:,} characters); shorten it"
            )

    def ids(self, ids: Sequence[int], modality: int, trainable: bool) -> None:
        self.flush()
        self.seq.add(ids, modality, trainable)

    def flush(self) -> None:
        if self._pieces:
            self.seq.add(self.processor.encode_pieces(self._pieces), TEXT, self._trainable)
            self._pieces = []

    def done(self) -> TokenSequence:
        self.flush()
        return self.seq


def check_unicode(text: str, error: type[JanusLikeError] = PromptError) -> None:
    """Refuse lone surrogates (what undecodable bytes such as a non-UTF-8 command-line argument become):
    the tokenizer cannot encode them and would fail with a bare TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        near = text[max(0, e.start - 20) : e.start + 20]
        raise error(
            f"text must be valid Unicode: the character at position {e.start} (from 0) of {near!a} is "
            f"U+{ord(text[e.start]):04X}, "
            "a lone surrogate (bytes that were not UTF-8?)"
        ) from None


def _special_split(text: str, specials: set[str]) -> list[str]:
    """`text` cut before and after every special-token string in it (longest first, as the tokenizer matches)."""
    if not specials:
        return [text]
    pattern = "(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")"
    return [part for part in re.split(pattern, text) if part]


def _short(value: Any, limit: int = 60) -> str:
    """A value's type and a one-line, shortened repr for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= limit else text[:limit] + '...'}"


def _image_of(item: dict) -> Any:
    """The image of an image content item: HF messages name it 'image', 'path' or 'url' (a local
    file's: a file:// URL becomes its path; nothing is downloaded)."""
    image = next((item[key] for key in ("image", "path", "url") if item.get(key) is not None), None)
    if isinstance(image, str) and image.startswith("file://"):
        return url2pathname(urlparse(image).path)
    return image


def _remote(image: Any) -> bool:
    """An image given as a URL (http://, s3://, …): never fetched."""
    return isinstance(image, str) and "://" in image


def _image_list(images: Any, what: str, error: type[JanusLikeError]) -> list:
    """A list of images; one bare path or image is refused rather than iterated character by character."""
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        raise error(
            f"{what} must be a list of images (paths or PIL images), got {_short(images)}; put a single image in a list"
        )
    return list(images)


def _checked_message(message: Any, error: type[JanusLikeError]) -> tuple[str, list[dict]]:
    """(role, content items) of one HF-style message, refusing a malformed one by name."""
    if not isinstance(message, dict):
        raise error(f"a message must be a dict with 'role' and 'content', got {_short(message)}")
    role = message.get("role")
    if role not in ROLES:
        raise error(f"unknown message role {role!r}; accepted: {', '.join(ROLES)}")
    if "content" not in message:
        raise error(f"a {role} message needs 'content': a string or a list of content items")
    return role, _content_items(message["content"], error, f"a {role} message")


def _content_items(content: Any, error: type[JanusLikeError], where: str) -> list[dict]:
    """Message content as checked {"type": "text"|"image"} items (a string is one text item)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, (list, tuple)):
        raise error(f"{where}'s content must be a string or a list of content items, got {_short(content)}")
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text" and not isinstance(item.get("text"), str):
            raise error(f"a text item in {where} needs a 'text' string, got {_short(item.get('text'))}")
        image = _image_of(item) if kind == "image" else None
        if kind == "image" and image is None:
            raise error(
                f"an image item in {where} needs an 'image' (or 'path', or 'url') field: a file path or a PIL image"
            )
        if _remote(image):
            raise error(
                f"an image item in {where} gives {image!r}: images are read from local files only "
                "(nothing is downloaded); download it and give its path"
            )
        if kind not in ("text", "image"):
            raise error(
                f"unknown content item {_short(item)} in {where}; accepted: "
                "{'type': 'text', 'text': ...} or {'type': 'image', 'image': ...}"
            )
    return list(content)


def _check_turns(turns: list[tuple[str, list[dict]]], for_generation: bool, error: type[JanusLikeError]) -> None:
    """Every user turn says something; a prompt to answer ends with the user's turn (after the
    assistant's <eos> the model would write past the end of the conversation)."""
    if not any(role == "user" for role, _ in turns):
        raise error("a conversation needs at least one user message")
    for role, items in turns:
        empty = not any(item["type"] == "image" or item["text"].strip() for item in items)
        if empty and role == "user":
            raise error("a user message is empty; give it some text or an image")
        if empty and role == "assistant":
            raise error("an assistant message is empty; give its answer (an empty one trains the model to say nothing)")
    if for_generation and turns[-1][0] != "user":
        raise error(
            f"the last message must be the user's (the assistant answers it), not the {turns[-1][0]}'s; "
            "drop the trailing assistant message"
        )


def _joined(items: list[dict]) -> list[dict]:
    """Checked content items (see `_content_items`) laid out as transformers' Janus chat template
    does, which reproduces DeepSeek's stripped `<image_placeholder>\n{question}` messages: the
    content's two ends stripped of whitespace (a stray newline from a text box changes nothing),
    a newline between an image and each neighbour, a space between two texts."""
    out, last = [], len(items) - 1
    newline = {"type": "text", "text": "\n"}
    for i, item in enumerate(items):
        if item["type"] == "image":
            out += [newline] * (i > 0) + [item] + [newline] * (i < last)
            continue
        text = item["text"]
        text = text.lstrip() if i == 0 else text
        text = text.rstrip() if i == last else text
        out.append({**item, "text": " " + text if i > 0 and items[i - 1]["type"] == "text" else text})
    return out


def _prefix_space(items: list[dict]) -> list[dict]:
    """The answer follows `<|Assistant|>:` after one space, as DeepSeek's template writes it."""
    if items and items[0]["type"] == "text":
        return [{**items[0], "text": " " + items[0]["text"]}, *items[1:]]
    return [{"type": "text", "text": " "}, *items]


def _resolve_images(message: Any, image_at) -> Any:
    """A record's message with image paths made relative to the JSONL file (shape checks come later)."""
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return message

    def local(item) -> bool:  # an image item naming a local file (a remote URL is refused by the content check)
        return isinstance(item, dict) and item.get("type") == "image" and not _remote(_image_of(item))

    items = [{**c, "image": image_at(_image_of(c))} if local(c) else c for c in content]
    return {**message, "content": items}


def _in_image_span(seq: TokenSequence, i: int) -> bool:
    """True for an understanding placeholder or the begin/end tags around it."""
    if seq.modality[i] == UND_IMAGE:
        return True
    return (i + 1 < len(seq) and seq.modality[i + 1] == UND_IMAGE) or (i > 0 and seq.modality[i - 1] == UND_IMAGE)
