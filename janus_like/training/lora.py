"""LoRA fine-tuning: low-rank adapters (peft) on chosen Linear layers, folded back for `final/`.

The adapted base weights stay frozen, so a 7B decoder trains with the optimizer state of a few
million adapter weights. `final/` holds plain weights (W + scale·B·A), loadable without peft.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from torch import nn

from ..errors import SettingsError
from .config import LoraSettings

ADAPTER = "default"  # peft's adapter name; one adapter per run


def is_adapter(name: str) -> bool:
    """A LoRA A/B weight that peft added (always trained)."""
    return ".lora_A." in name or ".lora_B." in name


def is_adapted_base(name: str) -> bool:
    """A weight of a layer that carries an adapter (always frozen)."""
    return ".base_layer." in name


def add_adapters(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Inject LoRA into every `nn.Linear` whose name matches `settings.targets` (never the VQ
    tokenizer); the adapted layers' names."""
    from peft import LoraConfig, inject_adapter_in_model

    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith("vq.")]
    names = [n for n in linear if any(fnmatchcase(n, p) for p in settings.targets)]
    if not names:
        raise SettingsError(
            f"lora.targets {settings.targets} match no Linear layer; names look like "
            f"{linear[0]!r}, {linear[-1]!r} (glob syntax, e.g. 'language_model.*_proj')"
        )
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=names)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():  # fp32 adapters on a bf16 model: AdamW steps on bf16 round away
        if is_adapter(name):
            param.data = param.data.float()
    return names


def scalings(model: nn.Module) -> dict[str, float]:
    """Adapted layer name -> its LoRA scale (alpha / r)."""
    from peft.tuners.lora import LoraLayer

    return {n: m.scaling[ADAPTER] for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def merged_state_dict(state_dict: dict[str, torch.Tensor], scale: dict[str, float]) -> dict[str, torch.Tensor]:
    """The state dict without adapters: each adapted weight becomes W + scale·B·A under its plain
    name. Works on the gathered tensors (peft's merge_and_unload needs whole live modules, which
    FSDP shards)."""
    merged = {}
    for key, value in state_dict.items():
        if is_adapter(key):
            continue
        if is_adapted_base(key):
            layer, param = key.split(".base_layer.")
            if param == "weight":
                a = state_dict[f"{layer}.lora_A.{ADAPTER}.weight"].float()
                b = state_dict[f"{layer}.lora_B.{ADAPTER}.weight"].float()
                value = (value.float() + scale[layer] * (b @ a)).to(value.dtype)
            key = f"{layer}.{param}"
        merged[key] = value
    return merged
