"""What a checkpoint's config claims, checked against its weight files' headers before any model is
built, for every layout: a config that lies (10⁶ layers, a 10⁹ hidden size) or a model too big for
the chosen devices is one CheckpointError naming the field, in milliseconds and with no allocation.

Order matters: module counts first (building a model with 10⁶ layers takes minutes even on the
meta device), numeric fields, then the sizes with a tensor to show them, then the whole model
built on the meta device against every tensor's shape and dtype, then its memory.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from ..configuration import COMPOSE_SETTINGS, JanusLikeConfig, check_compose_settings, check_image_fits
from ..errors import CheckpointError, SettingsError, is_number, one_line

# How a layout's config.json names a section this package reads under another name
SECTION_NAMES = {"deepseek": {"text_config": "language_config"}}

# Numbered module lists whose length a config field gives, as (the field, the modules, how many
# more modules than the field says); this package's tensor names, the VQ's counted on its decoder,
# which either encoder has (the decoder LM's own list is found by name, as any causal LM may be it)
MODULE_COUNTS = (
    ("vision_config.num_hidden_layers", "vision_model.encoder.layers", 0),
    ("vq_config.channel_multiplier", "vq.decoder.up_blocks", 0),  # one level per entry (either encoder)
    ("vq_config.num_res_blocks", "vq.decoder.up_blocks.0.resnets", 1),  # diffusers' up blocks hold one more
    ("aligner_depth", "aligner.layers", 0),  # Linear layers at 0, 2, …: GELUs hold no tensors
    ("gen_aligner_depth", "gen_aligner.layers", 0),
)
_DECODER_LAYERS = re.compile(r"^(language_model\.(?:[A-Za-z_]\w*\.)+?)(\d+)\.")

# Size fields and the tensor dimension that shows each; rows whose tensor a decoder names otherwise
# are skipped (the whole-model comparison that follows still sees their shapes)
SIZE_FIELDS = (
    ("text_config.vocab_size", "language_model.model.embed_tokens.weight", 0),
    ("text_config.hidden_size", "language_model.model.embed_tokens.weight", 1),
    ("text_config.intermediate_size", "language_model.model.layers.0.mlp.gate_proj.weight", 0),
    ("vision_config.hidden_size", "vision_model.embeddings.patch_embedding.weight", 0),
    ("vision_config.num_channels", "vision_model.embeddings.patch_embedding.weight", 1),
    ("vision_config.patch_size", "vision_model.embeddings.patch_embedding.weight", 2),
    ("vision_config.intermediate_size", "vision_model.encoder.layers.0.mlp.fc1.weight", 0),
    ("vq_config.codebook_size", "gen_embed.weight", 0),
    ("vq_config.codebook_dim", "gen_embed.weight", 1),
    ("vq_config.base_channels", "vq.encoder.conv_in.weight", 0),
    ("vq_config.in_channels", "vq.encoder.conv_in.weight", 1),
    ("vq_config.z_channels", "vq.quant_conv.weight", 1),
    ("vq_config.out_channels", "vq.decoder.conv_out.weight", 0),
    ("gen_head_hidden_size", "gen_head.output_mlp_projector.weight", 0),
)

# Floating-point weights are stored in one of these; anything else (int8, float8, …) is a quantized
# layout, none of which this package reads yet
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

_EPSILON = re.compile(r"(^|_)(eps|epsilon)$")
_POSITIVE_ROPE = re.compile(r"theta|factor")  # rope_theta, factor, low_freq_factor, short_factor, …
_SCAN_ELEMENTS = 2**24  # check_weights looks at a tensor this many values at a time


def check_before_building(
    model_class: type,
    config: JanusLikeConfig,
    weights: dict[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    layout: str = "janus_like",
    dtype: torch.dtype | None = None,
    room: tuple[int, str] | None = None,
    reshaped_ok: bool = False,
) -> None:
    """Refuse a config (of the checkpoint folder `path`) that cannot describe `weights` (meta tensors
    under this package's names, read from the files' headers) or a model that does not fit `room`
    (bytes, the devices' names; None: not checked). `reshaped_ok` lets sizes differ from the weights
    (transformers' ignore_mismatched_sizes: such tensors start fresh)."""
    names, where = SECTION_NAMES.get(layout, {}), str(Path(path) / "config.json")
    check_module_counts(config, weights, where, names)
    check_numbers(config, where, names)
    if not reshaped_ok:
        check_sizes(config, weights, where, names)
    model = meta_model(model_class, config, where)
    check_shapes_and_dtypes(model.state_dict(), weights, str(path), reshaped_ok)
    if room is not None:
        check_memory(model, weights, dtype, room, where)


def _field(config, path: str):
    for part in path.split("."):
        config = getattr(config, part, None)
    return config


def _named(path: str, names: dict[str, str] | None) -> str:
    """A field as the checkpoint's own config.json names it (`names`: its SECTION_NAMES)."""
    section, _, rest = path.partition(".")
    return f"{names[section]}.{rest}" if names and section in names and rest else path


def _refuse(where: str, claim: str, accepted: str) -> CheckpointError:
    return CheckpointError(f"unsupported checkpoint config in {where}: {claim}; accepted: {accepted}")


# --------------------------------------------------------------------------- numeric fields


def check_numbers(config: JanusLikeConfig, where: str, names: dict[str, str] | None = None) -> None:
    """Epsilons, rope thetas and scales are finite and positive; the settings `from_parts` checks
    (sizes, guidance, the generated image tiling the VQ grid and fitting the context) hold."""
    for section in ("text_config", "vision_config", "vq_config"):
        for field, value, accepted in _bad_numbers(getattr(config, section).to_dict(), section):
            raise _refuse(where, f"{_named(field, names)} = {value!r:.80}", accepted)
    try:
        check_compose_settings({key: getattr(config, key) for key in COMPOSE_SETTINGS}, where)
        check_image_fits(config, where)
    except SettingsError as e:
        raise CheckpointError(f"unsupported checkpoint config in {e}") from None


def _bad_numbers(settings: dict, prefix: str, in_rope: bool = False) -> Iterator[tuple[str, object, str]]:
    """(field, value, accepted) for each epsilon, rope theta or rope scale that is not a finite
    positive number, and each other rope number that is not finite."""
    for key, value in settings.items():
        key, field = str(key), f"{prefix}.{key}"  # id2label's keys are ints
        if isinstance(value, dict):
            yield from _bad_numbers(value, field, in_rope or key.startswith("rope"))
        elif value is None:
            continue  # absent: the model's default
        elif _EPSILON.search(key) or key == "rope_theta" or (in_rope and _POSITIVE_ROPE.search(key)):
            values = value if isinstance(value, list) else [value]
            if not all(is_number(v) and math.isfinite(v) and v > 0 for v in values):
                yield field, value, "a finite number > 0" + (" each" if isinstance(value, list) else "")
        elif in_rope and is_number(value) and not math.isfinite(value):
            yield field, value, "a finite number"


# --------------------------------------------------------------------------- config against headers


def check_module_counts(
    config: JanusLikeConfig, weights: dict[str, torch.Tensor], where: str, names: dict[str, str] | None = None
) -> None:
    """Layer, level and depth counts equal the numbered modules the weights hold."""
    counts = list(MODULE_COUNTS)
    decoder = next((m[1] for m in map(_DECODER_LAYERS.match, sorted(weights)) if m), None)
    if decoder is not None:
        counts.insert(0, ("text_config.num_hidden_layers", decoder.rstrip("."), 0))
    for field, modules, extra in counts:
        value = _field(config, field)
        claimed = len(value) if isinstance(value, (list, tuple)) else value
        held = _numbered(weights, modules) - extra
        if claimed != held:
            claim = f"has {claimed} entries" if isinstance(value, (list, tuple)) else f"= {value!r}"
            raise _refuse(
                where,
                f"{_named(field, names)} {claim}, but the weights hold {held} "
                f"({modules}.N{f', less {extra}' if extra else ''})",
                f"{held}, what the weights hold",
            )


def _numbered(weights: dict[str, torch.Tensor], modules: str) -> int:
    """How many `modules.N` the tensor names hold."""
    pattern = re.compile(re.escape(modules) + r"\.(\d+)\.")
    return len({m[1] for m in map(pattern.match, weights) if m})


def check_sizes(
    config: JanusLikeConfig, weights: dict[str, torch.Tensor], where: str, names: dict[str, str] | None = None
) -> None:
    """Each size field equals the dimension of the tensor that shows it."""
    for field, tensor, dim in SIZE_FIELDS:  # a tensor the model lacks (a patch encoder's conv_in) is skipped
        value, stored = _field(config, field), weights.get(tensor)
        if value is None or stored is None or stored.dim() <= dim or value == stored.shape[dim]:
            continue
        claimed = tuple(value if i == dim else n for i, n in enumerate(stored.shape))
        raise _refuse(
            where,
            f"{_named(field, names)} = {value!r}, but the weights disagree: {tensor} "
            f"(checkpoint {tuple(stored.shape)}, model {claimed})",
            f"{stored.shape[dim]}, what the weights hold",
        )


def meta_model(model_class: type, config: JanusLikeConfig, where: str) -> torch.nn.Module:
    """The `model_class` model `config` describes, built on the meta device (no memory), or a CheckpointError."""
    try:
        with torch.device("meta"):
            return model_class(copy.deepcopy(config))
    except (RuntimeError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        raise CheckpointError(
            f"unsupported checkpoint config in {where}: the model it describes cannot be built ({one_line(e)})"
        ) from e


def check_shapes_and_dtypes(
    expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], where: str, reshaped_ok: bool = False
) -> None:
    """Every tensor stored in `where` has the shape the model gives it (unless `reshaped_ok`), and
    floating-point weights are stored as floating point (missing and unexpected tensors are each
    loader's to name)."""
    for key in sorted(expected.keys() & weights.keys()):
        want, stored = expected[key], weights[key]
        if tuple(stored.shape) != tuple(want.shape) and not reshaped_ok:
            raise CheckpointError(
                f"the weights in {where} do not fit the model its config describes: shape differs: "
                f"{key} (checkpoint {tuple(stored.shape)}, model {tuple(want.shape)}); accepted: "
                "the shapes the config gives"
            )
        if want.is_floating_point() and stored.dtype not in WEIGHT_DTYPES:
            raise CheckpointError(
                f"the weights in {where} store {key} as {stored.dtype}, where the model holds "
                f"floating-point weights; accepted: {', '.join(map(str, WEIGHT_DTYPES))} "
                "(quantized checkpoints are not supported)"
            )
        if not want.is_floating_point() and stored.is_floating_point():
            raise CheckpointError(f"the weights in {where} store {key} as {stored.dtype}; accepted: {want.dtype}")


# --------------------------------------------------------------------------- memory


def check_memory(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    dtype: torch.dtype | None,
    room: tuple[int, str],
    where: str,
) -> None:
    """The model (each tensor once, at the dtype it loads in) fits the memory the chosen devices have."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    need = sum(t.numel() * _loaded_dtype(t, weights.get(key), dtype).itemsize for key, t in tensors)
    available, devices = room
    if need > available:
        params = sum(t.numel() for _, t in tensors)
        raise CheckpointError(
            f"the model in {where} needs {_size(need)} ({_count(params)} values"
            f"{f' in {dtype}' if dtype else ''}) but {devices} has {_size(available)} free; "
            "accepted: a model that fits: load it in a smaller dtype, on a device with more "
            "memory, or offload it (device_map='auto', offload_folder=DIR)"
        )


def _loaded_dtype(want: torch.Tensor, stored: torch.Tensor | None, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None and want.is_floating_point():
        return dtype
    return stored.dtype if stored is not None else want.dtype


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def room_for(
    device=None, device_map: str | dict | None = None, max_memory: dict | None = None, offload_folder: str | None = None
) -> tuple[int, str] | None:
    """(free bytes, names) of the devices a model is loaded onto; None when disk offload makes room
    unbounded or a device cannot say its free memory."""
    if isinstance(device_map, dict):
        targets = list(device_map.values())
    elif device_map is not None:  # a placement strategy: within max_memory, else on every device
        if offload_folder is not None or (max_memory and "disk" in max_memory):
            return None
        if max_memory:
            from accelerate.utils import convert_file_size_to_int

            return sum(convert_file_size_to_int(v) for v in max_memory.values()), f"max_memory {max_memory}"
        targets = ["cpu", *range(torch.cuda.device_count())]
    else:
        targets = [device if device is not None else "cpu"]
    if any(target == "disk" for target in targets):
        return None
    devices = list(dict.fromkeys(torch.device("cuda", t) if isinstance(t, int) else torch.device(t) for t in targets))
    free = [free_bytes(device) for device in devices]
    if None in free:
        return None
    return sum(free), " + ".join(map(str, devices))


def free_bytes(device: torch.device) -> int | None:
    """Memory free on a device: available RAM for the CPU, free memory for a CUDA GPU; None otherwise."""
    if device.type == "cpu":
        import psutil  # accelerate's dependency

        return psutil.virtual_memory().available
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None


# --------------------------------------------------------------------------- check_weights


def require_finite(name: str, tensor: torch.Tensor, where: str) -> None:
    """A CheckpointError naming `name` if this (floating) tensor holds NaN or infinity."""
    if not tensor.is_floating_point() or tensor.device.type == "meta":
        return
    bad = sum(int((~torch.isfinite(part)).sum()) for part in tensor.detach().reshape(-1).split(_SCAN_ELEMENTS))
    if bad:
        raise CheckpointError(
            f"{where}: {name} holds {bad} NaN or infinite value{'s' if bad > 1 else ''} "
            f"(of {tensor.numel()}); accepted: finite weights (check_weights=True refuses the rest)"
        )
