"""Atomic file writes: a file a user looks at is either the old one or the complete new one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from .errors import SettingsError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it owner-only; the file gets a plain file's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


MANIFEST = ".janus-like-outputs"  # in an --out folder: the files the last run wrote, one relative path a line


@contextlib.contextmanager
def output_set(out: str | os.PathLike, setting: str = "--out") -> Iterator[Path]:
    """Yield an empty temp folder inside `out` to write a command's whole output set into. On
    success the set replaces the files the previous run wrote there (its manifest lists them, so a
    folder never mixes two runs; folders they leave empty go too) and its own files are recorded.
    Nothing else is deleted; a file of the same name as a new one is replaced. If the block fails,
    `out` is untouched; if the moves fail, the manifest still lists every file of both runs. Errors
    name `out` as `setting`."""
    out = check_output_folder(out, setting)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".janus-like-", suffix=".tmp"))
    try:
        yield tmp
        new = sorted(str(path.relative_to(tmp)) for path in tmp.rglob("*") if not path.is_dir())
        _check_room(out, new, setting)
        old = _last_outputs(out)
        _write_manifest(out, sorted(set(old) | set(new)))
        for name in set(old) - set(new):
            if (out / name).is_file():
                (out / name).unlink()
        for name in new:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, out / name)
        for folder in sorted({(out / name).parent for name in old}, key=lambda f: -len(f.parts)):
            if folder != out and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        _write_manifest(out, new)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_room(out: Path, names: list[str], setting: str) -> None:
    """Refuse, before anything in `out` changes, a new file whose place a folder takes (or whose
    folder's place a file takes): moving the set in would fail halfway."""
    for name in names:
        if (out / name).is_dir():
            raise SettingsError(
                f"{setting} {out}: {out / name} is a folder, where this run writes a file; "
                "move it away or choose another folder"
            )
        for parent in Path(name).parents:
            if parent != Path(".") and (out / parent).exists() and not (out / parent).is_dir():
                raise SettingsError(
                    f"{setting} {out}: {out / parent} is a file, where this run writes a folder; "
                    "move it away or choose another folder"
                )


def unrecorded(out: Path, names: list[str]) -> list[Path]:
    """Those of `names` (files or folders) in `out` that hold something the manifest does not list:
    a user's or another program's files, which a run writing these names must not replace."""
    recorded = set(_last_outputs(out))
    found = []
    for name in names:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            ours = all(str(f.relative_to(out)) in recorded for f in path.rglob("*") if not f.is_dir())
        else:
            ours = not os.path.lexists(path) or (path.is_file() and not path.is_symlink() and name in recorded)
        if not ours:
            found.append(path)
    return found


def _write_manifest(out: Path, names: list[str]) -> None:
    write_text(out / MANIFEST, "".join(f"{name}\n" for name in names))


def _last_outputs(out: Path) -> list[str]:
    """The files the manifest in `out` lists, those that would lie inside `out` (a tampered or stale
    line never reaches outside it, through `..` or a symlinked folder)."""
    try:
        lines = (out / MANIFEST).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    root = out.resolve()
    return [
        name
        for name in lines
        if name
        and name != MANIFEST
        and not Path(name).is_absolute()
        and ".." not in Path(name).parts
        and (out / name).parent.resolve().is_relative_to(root)
    ]


def check_output_folder(out: str | os.PathLike, setting: str = "--out") -> Path:
    """An output folder that exists or can be made (checked before any long work starts); errors
    name it as `setting` (the flag or config key that gave it)."""
    if os.fspath(out) == "":  # Path("") is the working folder: a slip, not a choice
        raise SettingsError(f"{setting} is empty; give a folder to write into (. for the working folder)")
    out = Path(out)
    existing = next(folder for folder in (out, *out.parents) if folder.exists())
    if not existing.is_dir():
        raise SettingsError(f"{setting} {out}: {existing} is a file, not a folder; give a folder to write into")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(f"{setting} {out}: {existing} is not writable; give a folder you can write into")
    return out


def plain_modes(folder: Path) -> None:
    """Give `folder` and what it holds the modes plain mkdir and open would: mkdtemp makes folders
    owner-only and safetensors writes 0600 files, which others sharing a model could not read."""
    folder.chmod(0o777 & ~_UMASK)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~_UMASK)


def _read_umask() -> int:
    """The process umask (read once: setting it to read it is not thread-safe)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data, indent: int | None = None) -> Path:
    return write_text(path, json.dumps(data, indent=indent))
