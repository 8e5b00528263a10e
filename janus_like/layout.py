"""The sequence layout every part of the package shares (docs/ARCHITECTURE.md, "Sequence layout").

A sample is one token stream in which every position carries an id, a modality (text,
understanding image, generation image) and a flag saying whether it is a training target. The
image spans are `<begin_of_image>` + placeholders or VQ codes + `<end_of_image>`; the special
tokens are looked up by name in the tokenizer, never hard-coded (Janus-Pro-1B and -7B differ).
The model, the processor, the engine and the trainer import these names from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .errors import CheckpointError

TEXT, UND_IMAGE, GEN_IMAGE = 0, 1, 2  # the modality of a position
IGNORE_INDEX = -100  # the label of a position that is not a training target
TASKS = ("understanding", "generation", "interleaved", "text")  # the training record kinds


@dataclass
class TokenSequence:
    """One sample before batching: parallel lists of ids, modalities and target flags, plus images."""

    ids: list[int] = field(default_factory=list)
    modality: list[int] = field(default_factory=list)
    trainable: list[bool] = field(default_factory=list)
    und_pixels: list[torch.Tensor] = field(default_factory=list)  # (3, S, S) each, in order of appearance
    gen_pixels: list[torch.Tensor] = field(default_factory=list)  # (3, G, G) each, in [-1, 1]

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: Sequence[int], modality: int, trainable: bool) -> None:
        self.ids.extend(ids)
        self.modality.extend([modality] * len(ids))
        self.trainable.extend([trainable] * len(ids))


def special_token_ids(tokenizer, config) -> dict[str, int]:
    """The ids a tokenizer gives the config's special tokens (by name), as config field -> id;
    a CheckpointError names a token the vocabulary lacks."""
    ids = {
        f"{name}_id": _token_id(tokenizer, getattr(config, name))
        for name in ("image_start_token", "image_end_token", "image_token", "pad_token")
    }
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise CheckpointError(
            "the tokenizer needs a BOS and an EOS token; it has "
            f"bos={tokenizer.bos_token!r}, eos={tokenizer.eos_token!r}"
        )
    return {**ids, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}


def fill_special_token_ids(config, tokenizer) -> None:
    """Record in a model config the special-token ids its tokenizer gives."""
    for name, token_id in special_token_ids(tokenizer, config).items():
        setattr(config, name, token_id)


def _token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise CheckpointError(
            f"the tokenizer's vocabulary lacks the special token {token!r}; add it "
            "(JanusLikeForConditionalGeneration.from_parts does) or use the checkpoint's own tokenizer"
        )
    return token_id
