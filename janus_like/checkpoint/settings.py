"""What a foreign checkpoint says about its tokenizer and image preprocessing, and config checks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError

from ..errors import CheckpointError, is_int, is_number, one_line

JANUS_MEAN = (0.5, 0.5, 0.5)


def require(ok: bool, field: str, value, accepted: str) -> None:
    """Raise a CheckpointError naming a config field whose value this package cannot load."""
    if not ok:
        raise CheckpointError(f"unsupported checkpoint config: {field} = {value!r}; accepted: {accepted}")


def require_int(section: dict, key: str, default: int | None, field: str, minimum: int | None = None) -> int:
    """An integer config field (or its default), or a CheckpointError naming it."""
    value = section.get(key, default)
    ok = is_int(value) and (minimum is None or value >= minimum)
    require(ok, field, value, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
    return value


TEXT_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def require_sizes(config, prefix: str = "", keys: Sequence[str] = TEXT_SIZES) -> None:
    """Sizes a config gives are positive integers (transformers' config checks only their types)."""
    for key in keys:
        value = getattr(config, key, None)
        require(
            value is None or (is_int(value) and value >= 1),
            f"{prefix}.{key}" if prefix else key,
            value,
            "an integer >= 1",
        )


@contextmanager
def config_errors(file: Path):
    """Turn what translating a foreign config raises on a wrongly typed field (TypeError, ValueError,
    transformers' strict dataclass checks, …) into a one-line CheckpointError naming the file."""
    try:
        yield
    except CheckpointError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, StrictDataclassError) as e:
        raise CheckpointError(
            f"unsupported checkpoint config in {file}: {one_line(e)}; accepted: the fields "
            "and types its layout's config.json defines"
        ) from e


@dataclass(frozen=True)
class ImageSettings:
    """Understanding-image preprocessing: JanusLikeProcessor's image_mean / image_std / do_normalize."""

    image_mean: tuple[float, ...] = JANUS_MEAN
    image_std: tuple[float, ...] = JANUS_MEAN
    do_normalize: bool = True

    @classmethod
    def from_preprocessor(
        cls,
        pre: dict,
        image_size: int,
        tower_mean: Sequence[float] | None = None,
        tower_std: Sequence[float] | None = None,
    ) -> ImageSettings:
        """From a VLMImageProcessor / JanusImageProcessor config (Janus's published values when absent).
        DeepSeek's tower may normalise again inside the model (vision params pixel_mean/pixel_std);
        that is folded in here, since this package normalises in the processor only."""
        size = _processor_size(pre)
        require(
            size is None or size == image_size,
            "image processor size",
            size,
            f"{image_size} (the vision encoder's image_size)",
        )
        mean = channels(pre.get("image_mean") or JANUS_MEAN, "image processor image_mean")
        std = channels(pre.get("image_std") or JANUS_MEAN, "image processor image_std", positive=True)
        do_normalize = bool(pre.get("do_normalize", True))
        if tower_mean is None and tower_std is None:
            return cls(mean, std, do_normalize)
        tower_mean = channels(tower_mean or (0.0,) * 3, "vision_config.params.pixel_mean")
        tower_std = channels(tower_std or (1.0,) * 3, "vision_config.params.pixel_std", positive=True)
        # the padding colour comes from the processor's image_mean; one normalisation must use the same mean
        require(
            not do_normalize and tower_mean == mean,
            "vision_config.params.pixel_mean",
            tower_mean,
            f"only with do_normalize=false and image_mean {mean} (the padding colour's mean)",
        )
        return cls(tower_mean, tower_std, True)


def _processor_size(pre: dict) -> int | None:
    """The square side an image processor config gives: VLMImageProcessor's image_size or the
    transformers `size` ({"height": …} or an integer)."""
    size = pre.get("image_size")
    if size is None:
        size = pre.get("size")
        size = size.get("height") if isinstance(size, dict) else size
    require(size is None or is_int(size), "image processor size", size, "an integer (the side in pixels)")
    return size


def channels(value, field: str, positive: bool = False) -> tuple[float, ...]:
    """A per-channel setting (one number, or one per RGB channel) as 3 floats, or a CheckpointError."""
    if is_number(value):
        value = [value] * 3
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(is_number(v) and (v > 0 or not positive) for v in value)
    )
    require(ok, field, value, f"a list of 3 {'positive ' if positive else ''}numbers (one per RGB channel)")
    return tuple(float(v) for v in value)


def load_tokenizer(path: Path):
    """The tokenizer saved beside a checkpoint (fast tokenizer files), or a CheckpointError."""
    from transformers import AutoTokenizer
    from transformers.utils import logging

    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise CheckpointError(
            f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json); "
            "copy the checkpoint's tokenizer files beside its config.json"
        )
    refuse_custom_code(path)
    # DeepSeek's files name LlamaTokenizer for a byte-level tokenizer.json and a config.json of a model
    # type transformers does not know; transformers loads tokenizer.json as is and warns about both
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # never ask, never run
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer in {path}: {type(e).__name__}: {e}") from e
    finally:
        logging.set_verbosity(verbosity)


def refuse_custom_code(path: Path) -> None:
    """Refuse a folder whose tokenizer_config.json names its own Python classes (`auto_map`): this
    package never runs code from a model folder, and transformers would ask to run it."""
    file = path / "tokenizer_config.json"
    if file.is_file() and "auto_map" in read_json_object(file):
        raise CheckpointError(
            f"{file} names custom code to run (auto_map); janus_like never runs code from a "
            "model folder: use a checkpoint whose tokenizer transformers loads without it"
        )


def read_json(file: Path) -> dict:
    """A JSON settings file, {} when absent."""
    return read_json_object(file) if file.is_file() else {}


def read_json_object(file: Path) -> dict:
    """A UTF-8 JSON file holding an object, or a CheckpointError naming the file."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is not valid UTF-8 JSON: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{file} must hold a JSON object ({{...}}), not {type(value).__name__} {value!r:.40}")
    return value


def text_config_dict(config) -> dict:
    """A language-model config as a dict, without its dtype: loading casts (or keeps) the weights'
    dtype, and a dtype here would make transformers build the decoder in it while the rest stays fp32."""
    return {k: v for k, v in config.to_dict().items() if k not in ("dtype", "torch_dtype")}
