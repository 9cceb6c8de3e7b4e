"""Atomic output folders: complete or absent, never half-written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from img2mesh.errors import InputError
from img2mesh.outputs import atomic_output_dir


def test_folder_appears_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "out" / "chair"
    with atomic_output_dir(final) as work:
        (work / "input.png").write_bytes(b"x")
        assert not final.exists()  # nothing under the final name while writing
        assert work.parent == final.parent and work.name.startswith(".")
    assert (final / "input.png").read_bytes() == b"x"
    umask = os.umask(0)
    os.umask(umask)
    assert final.stat().st_mode & 0o777 == 0o777 & ~umask  # as readable as any folder the user makes
    assert sorted(p.name for p in final.parent.iterdir()) == ["chair"]


def test_rerun_replaces_the_earlier_result(tmp_path: Path) -> None:
    final = tmp_path / "chair"
    final.mkdir()
    (final / "stale.txt").write_text("old")
    with atomic_output_dir(final) as work:
        (work / "new.txt").write_text("new")
        assert (final / "stale.txt").exists()  # the old result stays intact until the new one is complete
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chair"]


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    final = tmp_path / "new" / "deeper" / "chair"
    with pytest.raises(RuntimeError), atomic_output_dir(final) as work:
        (work / "input.png").write_bytes(b"x")
        raise RuntimeError("stage failed")
    assert list(tmp_path.iterdir()) == []  # the parents this call created are gone too


def test_failure_keeps_an_earlier_result(tmp_path: Path) -> None:
    final = tmp_path / "chair"
    final.mkdir()
    (final / "mesh.glb").write_text("good")
    with pytest.raises(InputError), atomic_output_dir(final):
        raise InputError("Bad input.")
    assert (final / "mesh.glb").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chair"]


def test_unwritable_or_file_parent_is_a_sentence(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file, not a folder"), atomic_output_dir(tmp_path / "file" / "x"):
        pass
    if Path("/proc/self").exists():  # procfs refuses new folders even to root
        with pytest.raises(InputError, match="Cannot create output folder"), atomic_output_dir("/proc/img2mesh/x"):
            pass
    if os.geteuid() != 0:  # root writes anywhere, so the permission case only exists for other users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="Cannot write into"), atomic_output_dir(locked / "x"):
            pass
