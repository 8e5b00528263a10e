"""Checkpoint layouts (DESIGN.md §5): detection and loading of every supported format.

    janus_like  this package's `save_pretrained` directory (config.json with model_type "janus_like")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..configuration import JanusLikeConfig
from ..errors import CheckpointError

OWN = "janus_like"


def read_config_json(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{path} has no config.json; expected a model directory "
                              "(this package's save_pretrained output, DeepSeek Janus or transformers' Janus)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e


def detect_layout(path: str | os.PathLike) -> str:
    """Which supported layout a local directory holds."""
    config = read_config_json(Path(path))
    if config.get("model_type") == OWN:
        return OWN
    raise CheckpointError(f"unknown checkpoint layout in {path} (model_type={config.get('model_type')!r}); "
                          f"supported: {OWN!r}")


def load_model(cls, path: str | os.PathLike | None, *args, **kwargs):
    """`JanusLikeForConditionalGeneration.from_pretrained`: dispatch on the detected layout."""
    if path is None:
        from ..errors import ModelNotAvailableError

        raise ModelNotAvailableError("no model path given and the embedded default model is not shipped yet")
    path = Path(path)
    layout = detect_layout(path)
    if layout == OWN:
        return cls._from_own_format(path, *args, **kwargs)
    raise CheckpointError(f"no loader for layout {layout!r}")


def load_processor(path: str | os.PathLike, config: JanusLikeConfig | None = None):
    """`JanusLikeProcessor.from_pretrained`: the tokenizer and image settings beside a model."""
    from ..processor import JanusLikeProcessor

    path = Path(path)
    layout = detect_layout(path)
    if layout == OWN:
        return JanusLikeProcessor.from_dir(path, config or JanusLikeConfig.from_pretrained(path))
    raise CheckpointError(f"no processor loader for layout {layout!r}")
