"""Training checkpoints: written whole or not at all.

Every process writes its part (accelerate's `save_state`: model as safetensors, optimizer,
scheduler, per-process RNG states; FSDP/DeepSpeed shard as they do) into `.tmp-step-N/`; the main
process then adds `trainer_state.json` (step, data position, counters, loss history) and renames
the folder to `step-N/`. A rename is atomic, so a crash mid-write leaves only a `.tmp-` folder,
which `latest` never picks and the next save of that step replaces.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from ..checkpoint.files import weight_headers
from ..checkpoint.sanity import check_shapes_and_dtypes
from ..errors import CheckpointError, one_line
from ..fileio import write_json

STATE_FILE = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
# what accelerate's load_state raises for missing, truncated, refused (weights_only) or mismatched files
LOAD_ERRORS = (OSError, SafetensorError, pickle.UnpicklingError, RuntimeError, ValueError, KeyError)


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def temp_dir(root: Path, step: int) -> Path:
    return root / f".tmp-step-{step:08d}"


def is_complete(path: Path) -> bool:
    return STEP_DIR.match(path.name) is not None and (path / STATE_FILE).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_complete(p)), key=lambda p: p.name)


def latest(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve_resume(root: Path, resume: str) -> Path:
    """`--resume` (the latest complete checkpoint) or `--resume PATH`."""
    if resume == "latest":
        found = latest(root)
        if found is None:
            raise CheckpointError(f"--resume: no complete checkpoint in {root}")
        return found
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"--resume {resume}: not a complete training checkpoint (no {STATE_FILE}); "
            f"complete ones in {root}: {[p.name for p in list_checkpoints(root)] or 'none'}"
        )
    return path


def read_state(path: Path):
    """The parsed trainer_state.json (checked by the trainer)."""
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path / STATE_FILE}: {one_line(e)}") from e


def check_random_states(path: Path, process_index: int) -> None:
    """This process's random states in a checkpoint load and are states (tried on throwaway generators):
    accelerate's load_state skips a missing or damaged file with a log line only, and the run would go on
    with other random numbers than the one it continues (dropout, CFG prompt dropout of later samples)."""
    from accelerate.utils import load
    from accelerate.utils.constants import RNG_STATE_NAME

    file = path / f"{RNG_STATE_NAME}_{process_index}.pkl"
    try:
        states = load(file)
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
    except (*LOAD_ERRORS, EOFError, TypeError, IndexError) as e:
        raise CheckpointError(f"its random states {file.name} cannot be restored ({one_line(e)})") from e


def check_saved_weights(model, path: Path) -> None:
    """The model tensors a checkpoint saved (accelerate's model.safetensors; FSDP and DeepSpeed shard
    their own way) have the model's shapes and floating-point weights, read from the header:
    loading would cast an integer tensor silently."""
    file = path / "model.safetensors"
    if file.is_file():
        check_shapes_and_dtypes(model.state_dict(), weight_headers([file]), str(path))


def damaged(root: Path, path: Path, problem: str) -> CheckpointError:
    """A checkpoint `--resume` cannot use, and the newest other complete one in `root` to try instead."""
    others = [p for p in list_checkpoints(root) if p.resolve() != path.resolve()]
    instead = (
        f"the latest other complete checkpoint is {others[-1]} (--resume {others[-1]})"
        if others
        else f"no other complete checkpoint in {root}"
    )
    return CheckpointError(f"--resume {path} is damaged: {problem}; {instead}")


def save(accelerator, root: Path, step: int, state: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically on every process; prune to the newest `keep` (0: all)."""
    tmp, final = temp_dir(root, step), checkpoint_dir(root, step)
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a crashed save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep:
            for old in list_checkpoints(root)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
