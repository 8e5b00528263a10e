"""What a foreign checkpoint says about its tokenizer and image preprocessing, and config checks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import CheckpointError

JANUS_MEAN = (0.5, 0.5, 0.5)


def require(ok: bool, field: str, value, accepted: str) -> None:
    """Raise a CheckpointError naming a config field whose value this package cannot load."""
    if not ok:
        raise CheckpointError(f"unsupported checkpoint config: {field} = {value!r}; accepted: {accepted}")


@dataclass(frozen=True)
class ImageSettings:
    """Understanding-image preprocessing: JanusLikeProcessor's image_mean / image_std / do_normalize."""

    image_mean: tuple[float, ...] = JANUS_MEAN
    image_std: tuple[float, ...] = JANUS_MEAN
    do_normalize: bool = True

    @classmethod
    def from_preprocessor(cls, pre: dict, image_size: int, tower_mean: Sequence[float] | None = None,
                          tower_std: Sequence[float] | None = None) -> "ImageSettings":
        """From a VLMImageProcessor / JanusImageProcessor config (Janus's published values when absent).
        DeepSeek's tower may normalise again inside the model (vision params pixel_mean/pixel_std);
        that is folded in here, since this package normalises in the processor only."""
        size = pre.get("image_size") or (pre.get("size") or {}).get("height")
        require(size is None or int(size) == image_size, "image processor size", size,
                f"{image_size} (the vision encoder's image_size)")
        mean = tuple(float(m) for m in pre.get("image_mean") or JANUS_MEAN)
        std = tuple(float(s) for s in pre.get("image_std") or JANUS_MEAN)
        do_normalize = bool(pre.get("do_normalize", True))
        if tower_mean is None and tower_std is None:
            return cls(mean, std, do_normalize)
        tower_mean = tuple(float(m) for m in tower_mean or (0.0,) * 3)
        tower_std = tuple(float(s) for s in tower_std or (1.0,) * 3)
        # the padding colour comes from the processor's image_mean; one normalisation must use the same mean
        require(not do_normalize and tower_mean == mean, "vision_config.params.pixel_mean",
                tower_mean, f"only with do_normalize=false and image_mean {mean} (the padding colour's mean)")
        return cls(tower_mean, tower_std, True)


def load_tokenizer(path: Path):
    """The tokenizer saved beside a checkpoint (fast tokenizer files), or a CheckpointError."""
    from transformers import AutoTokenizer
    from transformers.utils import logging

    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise CheckpointError(f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json); "
                              "copy the checkpoint's tokenizer files beside its config.json")
    # DeepSeek's files name LlamaTokenizer for a byte-level tokenizer.json and a config.json of a model
    # type transformers does not know; transformers loads tokenizer.json as is and warns about both
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer in {path}: {type(e).__name__}: {e}") from e
    finally:
        logging.set_verbosity(verbosity)


def read_json(file: Path) -> dict:
    """A JSON settings file, {} when absent."""
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e


def text_config_dict(config) -> dict:
    """A language-model config as a dict, without its dtype: loading casts (or keeps) the weights'
    dtype, and a dtype here would make transformers build the decoder in it while the rest stays fp32."""
    return {k: v for k, v in config.to_dict().items() if k not in ("dtype", "torch_dtype")}
