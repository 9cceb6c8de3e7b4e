"""Output folders that appear complete or not at all.

A job writes a dozen files per input over seconds to minutes; if it fails or is killed half-way, a folder with
``input.png`` but no views must not look like a finished result to a person, to ``--skip-existing`` or to a batch
rerun. So every output folder is written under a hidden temporary sibling (same parent, hence same file system) and
renamed to its final name only once everything is in it; a rename within one file system is atomic. On failure the
temporary folder is removed, and so are the parent folders this job created, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from img2mesh.errors import InputError


@contextlib.contextmanager
def atomic_output_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``final`` (an earlier result there is swapped out).

    An exception inside the block removes the temporary folder (and the parents this call created) and propagates.
    """
    final = Path(final)
    created = _make_parents(final.parent)
    # A plain mkdir (not mkdtemp, which makes it private to the owner) so the result gets the umask's permissions.
    work = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        work.mkdir()
    except OSError as exc:
        _remove_empty(created)
        raise InputError(f"Cannot write into {final.parent} ({exc.strerror}); choose another output folder.") from None
    try:
        yield work
        _replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        _remove_empty(created)
        raise


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created, deepest first."""
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        missing.append(parent)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"Output location {folder} is a file, not a folder; choose another output folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"Cannot create output folder {folder}: part of its path is a file.") from None
    except OSError as exc:
        _remove_empty(missing)
        raise InputError(f"Cannot create output folder {folder} ({exc.strerror}); choose another one.") from None
    return missing


def _replace(work: Path, final: Path) -> None:
    """Rename ``work`` to ``final``; an existing ``final`` is moved aside first and deleted after."""
    old = None
    if final.exists() or final.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        final.rename(old / final.name)
    try:
        work.rename(final)
    except OSError:
        if old is not None:
            (old / final.name).rename(final)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
