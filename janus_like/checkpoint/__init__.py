"""Checkpoint layouts: detection and loading of every supported format (docs/ARCHITECTURE.md).

    janus_like  this package's `save_pretrained` directory (config.json with model_type "janus_like")
    deepseek    DeepSeek's original Janus / Janus-Pro (config.json with language_config, gen_vision_config, …)
    hf_janus    transformers' Janus (config.json with model_type "janus")

Foreign layouts are registered in `loading.LAYOUTS` (detection and loading both use it); they load
tensor by tensor into a model built on the meta device (`loading`), and `janus-like convert`
rewrites them in this package's format (`janus_like.convert`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError, ModelNotAvailableError, SettingsError
from .loading import LAYOUTS, ForeignCheckpoint, load_foreign_model, open_foreign
from .options import (
    DEVICE_MAP_STRATEGIES,
    LOADING_OPTIONS,
    check_device,
    check_device_map,
    resolve_chat_roles,
    resolve_dtype,
    set_attention,
)
from .settings import read_json_object

OWN = "janus_like"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"  # built by apps/default_model/build.py
DEFAULT_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json")
__all__ = [
    "default_model_path",
    "detect_layout",
    "load_model",
    "model_dir",
    "open_checkpoint",
    "resolve_path",
    "ForeignCheckpoint",
]


def read_config_json(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(
            f"{path} has no config.json; expected a model directory "
            "(this package's save_pretrained output, DeepSeek Janus or transformers' Janus)"
        )
    return read_json_object(file)


def layout_of(config: dict) -> str | None:
    """The name of the layout a config.json belongs to (this package's or a registered foreign one)."""
    if config.get("model_type") == OWN:
        return OWN
    return next((name for name, layout in LAYOUTS.items() if layout.matches(config)), None)


def detect_layout(path: str | os.PathLike) -> str:
    """Which supported layout a local directory holds."""
    config = read_config_json(Path(path))
    layout = layout_of(config)
    if layout is None:
        raise CheckpointError(
            f"unknown checkpoint layout in {path} (model_type={config.get('model_type')!r}); "
            f"supported: this package's (model_type {OWN!r}), "
            + ", ".join(layout.DESCRIPTION for layout in LAYOUTS.values())
        )
    return layout


def resolve_path(path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub id, fetched (or found in the cache) with huggingface_hub."""
    if not isinstance(path, (str, os.PathLike)):
        raise SettingsError(
            f"path must be a str or os.PathLike (a model folder or hub id) or None (the embedded "
            f"default model), got {type(path).__name__} {path!r:.40}"
        )
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    name = str(path)
    if local.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"{path} is not a model directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a local directory and could not be fetched from the hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


def model_dir(path: str | os.PathLike | None) -> Path:
    """A model's local directory: the embedded default model's for None, else `resolve_path`."""
    return default_model_path() if path is None else resolve_path(path)


def open_checkpoint(path: str | os.PathLike, chat_roles: str | tuple[str, str] | None = None) -> ForeignCheckpoint:
    """A DeepSeek or transformers Janus directory, its config translated and its tokenizer checked;
    `chat_roles` overrides its chat roles (see `options.resolve_chat_roles`)."""
    roles = resolve_chat_roles(chat_roles)
    path = resolve_path(path)
    layout = detect_layout(path)
    if layout == OWN:
        raise CheckpointError(f"{path} is already in this package's format")
    return open_foreign(path, layout, read_config_json(path), roles)


def default_model_path() -> Path:
    """The embedded default model's directory (janus_like/default_model/), checked to be complete."""
    path = DEFAULT_MODEL_DIR
    missing = [name for name in DEFAULT_MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ModelNotAvailableError(
            f"no model path given and the embedded default model in {path} lacks "
            f"{', '.join(missing)}; reinstall janus_like, rebuild it with "
            "`python apps/default_model/build.py`, or pass a model directory"
        )
    return path


def load_model(
    cls,
    path: str | os.PathLike | None,
    *,
    dtype=None,
    device=None,
    device_map=None,
    low_cpu_mem_usage: bool = True,
    attn_implementation: str | None = None,
    chat_roles: str | tuple[str, str] | None = None,
    **kwargs,
):
    """`JanusLikeForConditionalGeneration.from_pretrained`: dispatch on the detected layout
    (no path: the embedded default model). `attn_implementation` is set once the model is built,
    alike for every layout (transformers would also hand it to the VQ tokenizer, which refuses it).
    `chat_roles` overrides the config's user_role / assistant_role (see `options.resolve_chat_roles`)."""
    model = _load_model(
        cls,
        path,
        dtype=dtype,
        device=device,
        device_map=device_map,
        low_cpu_mem_usage=low_cpu_mem_usage,
        chat_roles=resolve_chat_roles(chat_roles),
        **kwargs,
    )
    if attn_implementation is not None:
        set_attention(model[0] if isinstance(model, tuple) else model, attn_implementation)
    return model


def _load_model(cls, path, *, dtype, device, device_map, low_cpu_mem_usage, chat_roles, **kwargs):
    dtype, device, device_map = resolve_dtype(dtype), check_device(device), check_device_map(device_map)
    if device is not None and device_map is not None:
        raise SettingsError("give either device or device_map, not both")
    if device_map is not None and not isinstance(device_map, dict) and device_map not in DEVICE_MAP_STRATEGIES:
        device, device_map = device_map, None  # transformers' device_map="cuda:0": the whole model there
    path = model_dir(path)
    layout = detect_layout(path)
    if layout == OWN:
        if device is not None:
            device_map = {"": device}
        if chat_roles is not None:  # config fields given to transformers' from_pretrained override config.json's
            kwargs["user_role"], kwargs["assistant_role"] = chat_roles
        return cls._from_own_format(path, dtype=dtype, device_map=device_map, **kwargs)
    unknown = set(kwargs) - {"max_memory", "offload_folder", "check_weights"}
    if unknown:
        raise SettingsError(
            f"unsupported loading options for a {layout} checkpoint: {', '.join(sorted(unknown))}; "
            f"accepted: {LOADING_OPTIONS}"
        )
    checkpoint = open_foreign(path, layout, read_config_json(path), chat_roles)
    return load_foreign_model(
        cls,
        checkpoint,
        dtype=dtype,
        device=device,
        device_map=device_map,
        low_cpu_mem_usage=low_cpu_mem_usage,
        **kwargs,
    )
