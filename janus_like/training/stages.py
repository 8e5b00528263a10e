"""Which parameters train: Janus's three stages, custom glob patterns, and the always-frozen VQ.

stage 1  aligners and the generation glue (aligner, gen_embed, gen_aligner, gen_head)
stage 2  everything but the two image encoders (SigLIP and the VQ tokenizer)
stage 3  everything but the VQ tokenizer (SigLIP too)
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from ..errors import SettingsError
from .lora import is_adapted_base, is_adapter

STAGE_TRAINABLE = {
    1: ["aligner.*", "gen_embed.*", "gen_aligner.*", "gen_head.*"],
    2: ["*"],
    3: ["*"],
}
STAGE_FROZEN = {1: [], 2: ["vision_model.*"], 3: []}
ALWAYS_FROZEN = ["vq.*"]  # the VQ tokenizer is trained on its own (tokenizers/train_vq.py)


def apply_stage(
    model: nn.Module, stage: int | None, trainable: list[str] = (), frozen: list[str] = (), adapters: bool = False
) -> list[str]:
    """Set `requires_grad` by stage preset, then extra `trainable` patterns, then `frozen` ones,
    then freeze the VQ tokenizer. With LoRA `adapters`, the adapters train, the weights they adapt
    stay frozen, and without a stage nothing else trains unless `trainable` says so.
    Returns the names of the trainable parameters."""
    preset_on = STAGE_TRAINABLE[stage] if stage is not None else [] if adapters else ["*"]
    preset_off = STAGE_FROZEN[stage] if stage is not None else []
    names = [name for name, _ in model.named_parameters()]
    for key, patterns in (("trainable", trainable), ("frozen", frozen)):
        for pattern in patterns:
            if not any(fnmatchcase(n, pattern) for n in names):
                raise SettingsError(
                    f"{key}: the pattern {pattern!r} matches no parameter; names look like "
                    f"{names[0]!r}, {names[-1]!r} "
                    "(glob syntax, e.g. 'language_model.model.layers.0.*')"
                )
    chosen = []
    for name, param in model.named_parameters():
        on = _matches(name, preset_on) and not _matches(name, preset_off)
        on = (on or _matches(name, trainable)) and not _matches(name, list(frozen) + ALWAYS_FROZEN)
        if adapters:
            on = is_adapter(name) or (on and not is_adapted_base(name))
        param.requires_grad_(on)
        if on:
            chosen.append(name)
    if not chosen:
        raise SettingsError("no parameter is left to train: check stage, trainable and frozen in the config")
    return chosen


def _matches(name: str, patterns) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)
