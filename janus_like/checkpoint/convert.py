"""`janus-like convert SRC DST`: a DeepSeek or transformers Janus checkpoint -> this package's format.

Tensors stream from the source shards through the layout's key mapping straight into bounded
safetensors shards, so peak memory is about one output shard (a 7B model converts in 24 GiB);
config.json, the tokenizer and processor_config.json are written beside them. Everything goes to
a temporary directory that is renamed to DST at the end.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from . import open_checkpoint
from .files import ShardWriter
from .loading import check_foreign, mapped_tensors
from .options import resolve_dtype


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | torch.dtype | None = None,
            max_shard_bytes: int = 2 * 2**30) -> Path:
    """Write `src` (any foreign layout) to `dst` in this package's format; returns `dst`."""
    from accelerate import init_empty_weights

    from ..modeling import JanusLikeForConditionalGeneration

    dtype = resolve_dtype(dtype)
    dst = Path(dst)
    if dst.is_symlink():  # the converted model is moved into place as a folder, which cannot replace a link
        raise CheckpointError(f"{dst} is a symbolic link; give the path of a new folder (or the link's target)")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise CheckpointError(f"{dst} exists and is not an empty directory; choose a new destination")
    checkpoint = open_checkpoint(src)
    processor = checkpoint.processor()  # also records the special-token ids in the config
    check_foreign(checkpoint)  # tensors stream through: no whole model in memory to check room for
    with init_empty_weights():
        model = JanusLikeForConditionalGeneration(checkpoint.config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    writer = ShardWriter(dst, max_shard_bytes)
    try:
        weights_dtype = dtype
        for key, tensor in mapped_tensors(checkpoint, expected, dtype, desc="converting", check_weights=True):
            if weights_dtype is None and tensor.is_floating_point():
                weights_dtype = tensor.dtype
            writer.add(key, tensor)
        checkpoint.config.dtype = weights_dtype
        checkpoint.config.save_pretrained(writer.tmp)
        processor.save_pretrained(writer.tmp)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return dst


def convert_command(args: argparse.Namespace) -> int:
    dst = convert(args.src, args.dst, getattr(args, "dtype", None))
    print(f"converted {args.src} -> {dst} (janus_like format)")
    return 0
