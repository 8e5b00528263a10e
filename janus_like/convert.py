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
from accelerate import init_empty_weights

from .checkpoint import open_checkpoint
from .checkpoint.files import ShardWriter
from .checkpoint.loading import mapped_tensors
from .checkpoint.options import resolve_dtype
from .errors import CheckpointError
from .modeling import JanusLikeForConditionalGeneration
from .processor import JanusLikeProcessor


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | torch.dtype | None = None,
            max_shard_bytes: int = 2 * 2**30, chat_roles: str | tuple[str, str] | None = None) -> Path:
    """Write `src` (any foreign layout) to `dst` in this package's format; returns `dst`. `chat_roles`
    overrides the roles written into the converted config (see `options.resolve_chat_roles`)."""
    dtype = resolve_dtype(dtype)
    dst = Path(dst)
    if dst.is_symlink():  # the converted model is moved into place as a folder, which cannot replace a link
        raise CheckpointError(f"{dst} is a symbolic link; give the path of a new folder (or the link's target)")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise CheckpointError(f"{dst} exists and is not an empty directory; choose a new destination")
    checkpoint = open_checkpoint(src, chat_roles)
    processor = JanusLikeProcessor.from_checkpoint(checkpoint)
    with init_empty_weights():
        model = JanusLikeForConditionalGeneration(checkpoint.config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    writer = ShardWriter(dst, max_shard_bytes)
    try:
        weights_dtype = dtype
        for key, tensor in mapped_tensors(checkpoint, expected, dtype, desc="converting"):
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
