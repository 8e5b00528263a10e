"""Weight files: find a checkpoint's shards, read them tensor by tensor, write sharded safetensors.

Reading never holds a whole checkpoint in memory: safetensors are opened lazily and `.bin`
shards are memory-mapped (`torch.load(mmap=True, weights_only=True)`), one shard at a time.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError, one_line
from ..fileio import plain_modes

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
SAFE_INDEX = "model.safetensors.index.json"


def weight_files(path: Path) -> list[Path]:
    """The weight shards of a checkpoint directory, from its index json or the single-file names."""
    for name in INDEX_FILES:
        index = path / name
        if index.is_file():
            shards = sorted(set(_weight_map(index).values()))
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise CheckpointError(
                    f"{index} lists {len(shards)} shards but {len(missing)} are missing from {path}: "
                    f"{', '.join(missing)}; download the complete checkpoint"
                )
            return [path / s for s in shards]
    for name in SINGLE_FILES:
        if (path / name).is_file():
            return [path / name]
    shards = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if shards:
        return shards
    raise CheckpointError(
        f"no weights in {path}: expected {' or '.join(SINGLE_FILES)}, or shards with {' or '.join(INDEX_FILES)}"
    )


def _weight_map(index: Path) -> dict[str, str]:
    """An index json's tensor -> shard file map, each shard a file name beside the index."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index} is not a valid shard index (needs a 'weight_map' object): {one_line(e)}") from e
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) and v and Path(v).name == v for v in weight_map.values()
    ):
        raise CheckpointError(
            f"{index} is not a valid shard index: 'weight_map' must map tensor names to shard "
            f"file names in the same directory, got {weight_map!r:.80}"
        )
    if not weight_map:
        raise CheckpointError(f"{index} lists no tensors (its 'weight_map' is empty); download the complete checkpoint")
    return weight_map


def load_bin(file: Path) -> dict[str, torch.Tensor]:
    """A `.bin` state dict, memory-mapped; only tensors and plain containers may be unpickled."""
    try:
        try:
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # files saved with the legacy (pre-zip) torch format cannot be memory-mapped
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the cause on a line of its own: a global it will not import, or an opcode no pickle has
        reason = next((line.strip() for line in str(e).splitlines() if "unsupported" in line.lower()), one_line(e))
        if "Unsupported operand" in reason:
            raise CheckpointError(f"cannot read {file}: it is not a PyTorch weights file ({reason:.200})") from e
        raise CheckpointError(
            f"refusing to load {file}: it contains objects other than tensors, which could run "
            f"code when unpickled (torch.load weights_only=True rejected it: {reason:.200}). "
            "Use a safetensors copy of the checkpoint"
        ) from e
    except Exception as e:
        raise CheckpointError(f"cannot read {file}: {one_line(e)}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} is not a state dict (a mapping of names to tensors)")
    return state


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of every shard, reading one shard at a time."""
    for file in files:
        if file.suffix == ".safetensors":
            try:
                with safe_open(file, framework="pt") as f:
                    for name in f.keys():
                        yield name, f.get_tensor(name)
            except CheckpointError:
                raise
            except Exception as e:
                raise unreadable(file, e) from e
        else:
            state = load_bin(file)
            for name in list(state):
                yield name, state.pop(name)


def count_tensors(files: list[Path]) -> int | None:
    """How many tensors the shards hold, when the index or the safetensors headers say so cheaply."""
    total = 0
    for file in files:
        if file.suffix != ".safetensors":
            return None
        total += len(safetensors_keys(file))
    return total


def safetensors_keys(file: Path) -> list[str]:
    """The tensor names in a safetensors header; a CheckpointError if the file is not complete safetensors."""
    try:
        with safe_open(file, framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own SafetensorError (header too large, file too short, …)
        raise unreadable(file, e) from e


# safetensors' names of the dtypes its headers give (its own table is private)
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def weight_headers(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor's name, shape and dtype, as a meta tensor, without reading the tensors: from the
    safetensors headers, or from the memory-mapped `.bin` pickles (weights_only)."""
    headers = {}
    for file in files:
        if file.suffix != ".safetensors":
            headers.update({name: torch.empty_like(t, device="meta") for name, t in load_bin(file).items()})
            continue
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    info = f.get_slice(name)
                    dtype = SAFETENSORS_DTYPES.get(info.get_dtype())
                    if dtype is None:
                        raise CheckpointError(
                            f"{file} stores {name} as {info.get_dtype()}; accepted: {', '.join(SAFETENSORS_DTYPES)}"
                        )
                    headers[name] = torch.empty(info.get_shape(), dtype=dtype, device="meta")
        except CheckpointError:
            raise
        except Exception as e:
            raise unreadable(file, e) from e
    return headers


def unreadable(file: Path, error: Exception) -> CheckpointError:
    """The error for a safetensors file that is truncated, empty or not safetensors at all."""
    return CheckpointError(
        f"cannot read {file}: {one_line(error)}; expected a complete safetensors file (download or save it again)"
    )


class ShardWriter:
    """Writes tensors into safetensors shards of at most `max_shard_bytes`, plus the index json.

    Shards go to a temporary directory beside `directory`; `commit` moves the finished set into
    place, so an interrupted write never leaves a half-written checkpoint."""

    def __init__(self, directory: Path, max_shard_bytes: int = 2 * 2**30):
        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        except OSError as e:  # a parent is a file, or is not writable
            raise CheckpointError(
                f"cannot write {directory}: {e.strerror} ({e.filename}); choose a destination "
                "inside a writable directory"
            ) from e
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        # safetensors refuses views that share storage (q/k/v split from one qkv tensor)
        if tensor.untyped_storage().nbytes() != nbytes or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()
        self.pending[name] = tensor
        self.pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        save_file(self.pending, self.tmp / f"shard-{len(self.shards)}.safetensors", metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self) -> None:
        """Write the last shard and the index, then move the directory (with whatever else was
        written into `self.tmp`) into place."""
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for i, (keys, name) in enumerate(zip(self.shards, names)):
            os.replace(self.tmp / f"shard-{i}.safetensors", self.tmp / name)
            weight_map.update({k: name for k in keys})
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2))
        if self.directory.exists():
            if any(self.directory.iterdir()):
                self.abort()
                raise CheckpointError(f"{self.directory} exists and is not empty; choose a new destination")
            self.directory.rmdir()
        plain_modes(self.tmp)
        os.replace(self.tmp, self.directory)
