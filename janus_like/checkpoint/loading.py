"""Loading a foreign checkpoint: translate its config, stream its tensors through the layout's key
mapping with shape checks, and assign them into a model built on the meta device."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn
from tqdm.auto import tqdm

from ..configuration import JanusLikeConfig
from ..errors import CheckpointError, one_line
from ..layout import fill_special_token_ids
from . import deepseek, hf_janus
from .files import count_tensors, iter_tensors, weight_files, weight_headers
from .sanity import check_before_building, require_finite, room_for
from .settings import ImageSettings

# The foreign layouts, the one place to register a new one. Each is a module that provides
# NAME, DESCRIPTION, matches(raw config) -> bool, build_config(path, raw) -> (config, tokenizer,
# image settings), map_tensor(name, tensor) -> [(our name, tensor)] | None and fallbacks(raw).
LAYOUTS: dict[str, ModuleType] = {layout.NAME: layout for layout in (deepseek, hf_janus)}


@dataclass
class ForeignCheckpoint:
    """A DeepSeek or transformers Janus directory, understood: our config, its tokenizer and image settings."""

    path: Path
    layout: str
    raw: dict
    config: JanusLikeConfig
    tokenizer: object
    images: ImageSettings

    @property
    def module(self) -> ModuleType:
        return LAYOUTS[self.layout]


def open_foreign(path: Path, layout: str, raw: dict, chat_roles: tuple[str, str] | None = None) -> ForeignCheckpoint:
    """Translate a foreign checkpoint's config; `chat_roles` (user, assistant) overrides its chat roles."""
    config, tokenizer, images = LAYOUTS[layout].build_config(path, raw, chat_roles)
    fill_special_token_ids(config, tokenizer)  # fails early (CheckpointError) when the vocabulary lacks the image tags
    return ForeignCheckpoint(path, layout, raw, config, tokenizer, images)


def check_foreign(
    model_class: type,
    checkpoint: ForeignCheckpoint,
    dtype: torch.dtype | None = None,
    room: tuple[int, str] | None = None,
) -> None:
    """The translated config against the weight files' headers, before any `model_class` model is
    built (`sanity`)."""
    headers = {}
    for source, tensor in weight_headers(weight_files(checkpoint.path)).items():
        headers.update(_map(checkpoint, source, tensor) or [])  # unknown names: mapped_tensors lists them
    check_before_building(
        model_class, checkpoint.config, headers, checkpoint.path, layout=checkpoint.layout, dtype=dtype, room=room
    )


def mapped_tensors(
    checkpoint: ForeignCheckpoint,
    expected: dict[str, tuple[int, ...]],
    dtype: torch.dtype | None = None,
    desc: str = "loading",
    check_weights: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the checkpoint under this package's name, shape-checked against `expected`
    (with `check_weights`, also for NaN / inf), floating tensors cast to `dtype`. Raises a
    CheckpointError listing unexpected or missing keys."""
    files = weight_files(checkpoint.path)
    fallbacks = checkpoint.module.fallbacks(checkpoint.raw)
    kept: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    unexpected: list[str] = []
    for source, tensor in tqdm(iter_tensors(files), total=count_tensors(files), desc=desc, unit="tensor", leave=False):
        mapped = _map(checkpoint, source, tensor)
        if mapped is None:
            unexpected.append(source)
            continue
        for key, value in mapped:
            if key not in expected:
                unexpected.append(f"{source} (as {key})")
                continue
            if key in seen:  # in two shards (or under two names): which copy is meant cannot be told
                raise CheckpointError(
                    f"{checkpoint.path} holds {key} twice (again as {source}); a checkpoint "
                    "stores each tensor once; remove the stray shard"
                )
            if tuple(value.shape) != expected[key]:
                raise CheckpointError(
                    f"shape mismatch for {source} (loaded as {key}): the checkpoint has "
                    f"{tuple(value.shape)}, the model built from its config.json expects "
                    f"{expected[key]}"
                )
            if check_weights:
                require_finite(f"{source} (loaded as {key})", value, str(checkpoint.path))
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            if key in fallbacks.values():
                kept[key] = value
            seen.add(key)
            yield key, value
    if unexpected:
        raise CheckpointError(
            f"{len(unexpected)} tensors in {checkpoint.path} are not part of the model its "
            f"config.json describes: {some_names(unexpected)}"
        )
    for target, source in fallbacks.items():
        if target not in seen and source in kept:  # tied by transformers, so saved once
            seen.add(target)
            yield target, kept[source].clone()
    missing = sorted(set(expected) - seen)
    if missing:
        raise CheckpointError(f"{len(missing)} model tensors are missing from {checkpoint.path}: {some_names(missing)}")


def _map(checkpoint: ForeignCheckpoint, source: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]] | None:
    """The layout's mapping of one tensor; a CheckpointError when its shape is one the mapping cannot
    take apart (a 0-d pos_embed, a fused qkv that is not a matrix)."""
    try:
        return checkpoint.module.map_tensor(source, tensor)
    except (IndexError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"cannot load {source} from {checkpoint.path}: its shape {tuple(tensor.shape)} is "
            f"not one the {checkpoint.layout} layout has ({one_line(e)})"
        ) from e


def some_names(names, n: int = 8) -> str:
    """The first `n` of some tensor names, sorted, and how many there are in all, for an error message."""
    names = sorted(names)
    return ", ".join(names[:n]) + (f" … ({len(names)} in all)" if len(names) > n else "")


def no_split_modules(model: nn.Module) -> list[str]:
    """Module classes accelerate must keep on one device (decoder and encoder layers, VQ, glue)."""
    names = ["JanusLikeVQModel", "MlpAligner", "GenHead"]
    for part in (model.language_model, model.vision_model):
        names += list(getattr(part, "_no_split_modules", None) or [])
    return names


def load_foreign_model(
    cls,
    checkpoint: ForeignCheckpoint,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
    low_cpu_mem_usage: bool = True,
    check_weights: bool = False,
):
    """Check the config against the weights' headers and the devices' memory, build the model (on
    the meta device unless `low_cpu_mem_usage=False`) and assign every tensor straight to its device;
    `device_map` ("auto" or a dict) places and offloads with accelerate."""
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    check_foreign(cls, checkpoint, dtype, room_for(device, device_map, max_memory, offload_folder))
    config = checkpoint.config
    with init_empty_weights(include_buffers=False) if low_cpu_mem_usage else nullcontext():
        model = cls(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    placement = None
    if isinstance(device_map, str):
        placement = infer_auto_device_map(
            model, max_memory=max_memory, no_split_module_classes=no_split_modules(model), dtype=dtype
        )
    elif device_map is not None:
        placement = dict(device_map)
    if placement and "disk" in placement.values() and offload_folder is None:
        raise CheckpointError("the device map offloads to disk; pass offload_folder=DIR (or more max_memory)")
    for key, value in mapped_tensors(checkpoint, expected, dtype, check_weights=check_weights):
        target = device if placement is None else _placed(key, placement)
        target = "cpu" if target in (None, "disk") else target
        set_module_tensor_to_device(
            model, key, target, value=value, dtype=value.dtype if value.is_floating_point() else None
        )
    if placement is not None:
        model = dispatch_model(model, device_map=placement, offload_dir=offload_folder)
    elif device is not None:
        model.to(device)  # the buffers made at construction
    if dtype is not None:
        model.config.dtype = dtype
    return model.eval()


def _placed(key: str, placement: dict) -> str | int | torch.device:
    """The device a device map gives a tensor: its longest matching module prefix."""
    best = None
    for prefix, target in placement.items():
        if prefix == "" or key == prefix or key.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, target)
    if best is None:
        raise CheckpointError(f"the device map places no module holding {key}; add it or use device_map='auto'")
    return best[1]
