"""This package's own format, read by transformers' `PreTrainedModel.from_pretrained`, made strict.

transformers only logs a report when a tensor is missing (and initialises it fresh), unexpected or
reshaped, and lets its file errors through raw; here each is a CheckpointError naming the file or tensor.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from safetensors import SafetensorError

from ..configuration import JanusLikeConfig
from ..errors import CheckpointError, SettingsError, one_line
from .files import iter_tensors, weight_files, weight_headers
from .loading import some_names
from .options import LOADING_OPTIONS
from .sanity import check_before_building, require_finite, room_for
from .settings import config_errors, require_sizes

TRANSFORMERS_LOADING_LOGGER = "transformers.modeling_utils"  # where from_pretrained logs its LOAD REPORT


def load_own_format(
    model_class: type,
    load: Callable,
    path: str | os.PathLike,
    *args,
    output_loading_info: bool = False,
    ignore_mismatched_sizes: bool = False,
    check_weights: bool = False,
    **kwargs,
):
    """`load(path, …)` (transformers' from_pretrained of `model_class`) after checking config.json against the weight
    files' headers (and, with `check_weights`, every weight for NaN / inf), then refuse whatever
    tensor it could not load as saved (reshaped ones only unless `ignore_mismatched_sizes`)."""
    path = Path(path)
    config = check_config(path)
    files = weight_files(path)
    room = room_for(
        device_map=kwargs.get("device_map"),
        max_memory=kwargs.get("max_memory"),
        offload_folder=kwargs.get("offload_folder"),
    )
    check_before_building(
        model_class,
        config,
        weight_headers(files),
        path,
        dtype=kwargs.get("dtype"),
        room=room,
        reshaped_ok=ignore_mismatched_sizes,
    )
    if check_weights:
        for name, tensor in iter_tensors(files):
            require_finite(name, tensor, str(path))
    try:
        # mismatches come back in the loading info (transformers would raise without naming them)
        with held_load_report() if not ignore_mismatched_sizes else nullcontext():  # our errors name the tensors
            model, info = load(path, *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except (OSError, SafetensorError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"cannot load the weights in {path}: {one_line(e)}") from e
    except TypeError as e:  # transformers hands an option it does not know to the model, which takes a config only
        option = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if option is None:
            raise
        raise SettingsError(
            f"unsupported loading option {option[1]!r}; accepted: {LOADING_OPTIONS}, and for this "
            "package's format also transformers' from_pretrained options and config fields"
        ) from None
    check_loading_info(path, info, ignore_mismatched_sizes)
    return (model, info) if output_loading_info else model


@contextmanager
def held_load_report() -> Iterator[list[logging.LogRecord]]:
    """Hold transformers' LOAD REPORT table (missing, unexpected, reshaped tensors) back while
    loading, into the yielded list: a strict check then raises one line naming the tensors, rather
    than printing a table above it. `show_load_report` lets a held one through after all."""
    log, held = logging.getLogger(TRANSFORMERS_LOADING_LOGGER), []
    level, own_level = log.getEffectiveLevel(), log.level

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return record.levelno >= level  # anything else as the user's verbosity says

    log.addFilter(hold)
    # the report is a warning: at error verbosity the logger is opened to warnings (the filter keeps the
    # rest quiet). Only then: a level of its own makes transformers warn about every unsharded layer
    if level > logging.WARNING:
        log.setLevel(logging.WARNING)
    try:
        yield held
    finally:
        log.removeFilter(hold)
        log.setLevel(own_level)


def show_load_report(held: list[logging.LogRecord]) -> None:
    """Let held reports through as transformers would have shown them (if its verbosity shows warnings)."""
    log = logging.getLogger(TRANSFORMERS_LOADING_LOGGER)
    for record in held:
        if log.isEnabledFor(record.levelno):
            log.handle(record)


def load_report_rows(held: list[logging.LogRecord]) -> str:
    """The rows of held LOAD REPORT tables on one line: `key STATUS details; …`."""
    rows = []
    for record in held:
        for line in re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()).splitlines():
            cells = [cell.strip() for cell in line.split("|")]
            if len(cells) > 1 and cells[0] not in ("", "Key") and not set(line) <= set("-+| "):
                rows.append(" ".join(cell for cell in cells if cell))
    return "; ".join(rows)


def check_config(path: Path) -> JanusLikeConfig:
    """config.json makes a JanusLikeConfig with positive sizes (else transformers fails raw: a strict
    dataclass error, or a bad tensor dimension when it builds the model)."""
    with config_errors(path / "config.json"):
        config = JanusLikeConfig.from_pretrained(path)
    require_sizes(config.text_config, "text_config")
    require_sizes(config, keys=("aligner_depth", "gen_aligner_depth", "gen_head_hidden_size", "gen_image_size"))
    return config


def check_loading_info(path: Path, info: dict, ignore_mismatched_sizes: bool = False) -> None:
    """Raise a CheckpointError for tensors the model expects but `path` lacks, holds but the model
    lacks, or holds in another shape."""
    problems = []
    if info["missing_keys"]:
        problems.append(f"missing: {some_names(info['missing_keys'])}")
    if info["unexpected_keys"]:
        problems.append(f"not in the model: {some_names(info['unexpected_keys'])}")
    if info["mismatched_keys"] and not ignore_mismatched_sizes:
        shapes = [
            f"{key} (checkpoint {tuple(saved)}, model {tuple(model)})"
            for key, saved, model in sorted(info["mismatched_keys"])
        ]
        problems.append(f"shape differs: {some_names(shapes)}")
    if problems:
        raise CheckpointError(
            f"the tensors in {path} do not match the model its config.json describes; "
            f"{'; '.join(problems)}. Accepted: the tensors save_pretrained writes for that config"
        )
