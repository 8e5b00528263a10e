"""Atomic writes leave either the old file or the complete new one, never a half-written file."""

import pytest

from janus_like.fileio import atomic_path, write_json, write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_text(tmp_path / "index.md", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.md"]


def test_successful_write_replaces(tmp_path):
    target = write_json(tmp_path / "sub" / "r.json", {"a": 1})
    assert target.read_text() == '{"a": 1}'


def _write_set(out, files: dict[str, str]) -> None:
    from janus_like.fileio import output_set

    with output_set(out) as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


def test_output_set_replaces_only_the_files_the_last_run_wrote(tmp_path):
    out = tmp_path / "out"
    (out / "prompt_0").mkdir(parents=True)
    (out / "prompt_0" / "mine.txt").write_text("mine")  # a folder a run also writes into, with a file of the user's
    (out / "image_9.png").write_text("mine")
    _write_set(out, {"prompt_0/image_0.png": "run 1", "prompt_1/image_0.png": "run 1"})
    assert (out / "prompt_0" / "image_0.png").read_text() == "run 1"
    _write_set(out, {"image_0.png": "run 2"})
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name != ".janus-like-outputs") == [
        "image_0.png",
        "image_9.png",
        "prompt_0",
        "prompt_0/mine.txt",
    ]  # prompt_1/ was ours and is gone


def test_output_set_that_fails_while_moving_leaves_every_file_listed_for_the_next_run(tmp_path, monkeypatch):
    import os

    out = tmp_path / "out"
    _write_set(out, {"a.png": "run 1", "b.png": "run 1"})
    replace, calls = os.replace, []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        _write_set(out, {"sub/c.png": "run 2", "sub/d.png": "run 2"})
    monkeypatch.setattr(os, "replace", replace)
    _write_set(out, {"e.png": "run 3"})
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name != ".janus-like-outputs") == ["e.png"]


@pytest.mark.parametrize("in_the_way", ["folder named like a file", "file named like a folder"])
def test_output_set_blocked_by_a_user_path_changes_nothing(tmp_path, in_the_way):
    from janus_like import SettingsError

    out = tmp_path / "out"
    _write_set(out, {"image_0.png": "run 1", "settings.json": "run 1"})
    if in_the_way == "folder named like a file":
        (out / "image_1.png").mkdir()
        new, problem = {"image_0.png": "run 2", "image_1.png": "run 2"}, "image_1.png is a folder"
    else:
        (out / "prompt_1").write_text("mine")
        new, problem = {"prompt_0/image_0.png": "run 2", "prompt_1/image_0.png": "run 2"}, "prompt_1 is a file"
    before = {str(p.relative_to(out)): p.read_text() if p.is_file() else None for p in out.rglob("*")}
    with pytest.raises(SettingsError, match=problem):
        _write_set(out, new)
    assert {str(p.relative_to(out)): p.read_text() if p.is_file() else None for p in out.rglob("*")} == before
