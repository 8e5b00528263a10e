"""`janus-like convert SRC DST`: a DeepSeek or transformers Janus checkpoint -> this package's format.

Tensors stream from the source shards through the layout's key mapping straight into bounded
safetensors shards, so peak memory is about one output shard (a 7B model converts in 24 GiB);
config.json, the tokenizer and processor_config.json are written beside them. Everything goes to
a temporary directory that is renamed to DST at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import torch
from accelerate import init_empty_weights

from .checkpoint import open_checkpoint
from .checkpoint.files import ShardWriter
from .checkpoint.loading import check_foreign, mapped_tensors
from .checkpoint.options import resolve_dtype
from .errors import CheckpointError
from .modeling import JanusLikeForConditionalGeneration
from .processor import JanusLikeProcessor

IN_PROGRESS = ".janus-like-convert"  # in a convert's temporary folder: "host pid" of the process writing it


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    max_shard_bytes: int = 2 * 2**30,
    chat_roles: str | tuple[str, str] | None = None,
) -> Path:
    """Write `src` (any foreign layout) to `dst` in this package's format; returns `dst`. `chat_roles`
    overrides the roles written into the converted config (see `options.resolve_chat_roles`)."""
    dtype = resolve_dtype(dtype)
    dst = Path(dst)
    if dst.is_symlink():  # the converted model is moved into place as a folder, which cannot replace a link
        raise CheckpointError(f"{dst} is a symbolic link; give the path of a new folder (or the link's target)")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise CheckpointError(f"{dst} exists and is not an empty directory; choose a new destination")
    for folder in remove_stale_temporaries(dst.parent):
        print(f"removed {folder}, the temporary folder of an interrupted convert", file=sys.stderr)
    for folder in unmarked_temporaries(dst):
        print(
            f"{folder} looks like the temporary folder of an interrupted convert into {dst} (one without a mark "
            "saying whose); remove it unless a convert into it is running",
            file=sys.stderr,
        )
    checkpoint = open_checkpoint(src, chat_roles)
    processor = JanusLikeProcessor.from_checkpoint(checkpoint)
    check_foreign(JanusLikeForConditionalGeneration, checkpoint)  # streamed: no room to check for a whole model
    with init_empty_weights():
        model = JanusLikeForConditionalGeneration(checkpoint.config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    writer = ShardWriter(dst, max_shard_bytes)
    try:
        (writer.tmp / IN_PROGRESS).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        weights_dtype = dtype
        for key, tensor in mapped_tensors(checkpoint, expected, dtype, desc="converting", check_weights=True):
            if weights_dtype is None and tensor.is_floating_point():
                weights_dtype = tensor.dtype
            writer.add(key, tensor)
        checkpoint.config.dtype = weights_dtype
        checkpoint.config.save_pretrained(writer.tmp)
        processor.save_pretrained(writer.tmp)
        (writer.tmp / IN_PROGRESS).unlink()
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return dst


def remove_stale_temporaries(parent: Path) -> list[Path]:
    """Remove the temporary folders in `parent` that a killed convert left (hidden, marked as a convert's
    by IN_PROGRESS, written by a process of this host that no longer runs); return them. Nothing else is
    touched: a folder without the mark, or of a process still running or on another host, stays."""
    removed = []
    for folder in parent.glob(".*") if parent.is_dir() else []:
        if folder.is_dir() and not folder.is_symlink() and _writer_is_gone(folder / IN_PROGRESS):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def unmarked_temporaries(dst: Path) -> list[Path]:
    """Folders named as ShardWriter names its temporary folder for `dst` (mkdtemp: 8 random characters)
    that carry no IN_PROGRESS mark, such as those a killed convert of an earlier version left."""
    pattern = re.compile(rf"\.{re.escape(dst.name)}\.[a-z0-9_]{{8}}")
    parent = dst.parent if dst.parent.is_dir() else None
    return sorted(
        folder
        for folder in (parent.glob(".*") if parent else [])
        if pattern.fullmatch(folder.name)
        and folder.is_dir()
        and not folder.is_symlink()
        and not (folder / IN_PROGRESS).exists()
    )


def _writer_is_gone(mark: Path) -> bool:
    """The convert that wrote `mark` ran on this host and its process has ended."""
    try:
        host, pid = mark.read_text(encoding="utf-8").split()
        if host != socket.gethostname() or int(pid) <= 0:
            return False
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (OSError, ValueError, UnicodeDecodeError):  # no mark, an odd one, or another user's live process
        return False
    return False


def convert_command(args: argparse.Namespace) -> int:
    dst = convert(args.src, args.dst, getattr(args, "dtype", None))
    print(f"converted {args.src} -> {dst} (janus_like format)")
    return 0
