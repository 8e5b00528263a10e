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
