"""Output locations checked before any work: a light module (no trimesh, no torch), so a command can refuse an
unwritable folder before its heavy imports; :mod:`recon.export` checks its targets with it too."""

from __future__ import annotations

import tempfile
from pathlib import Path

from recon.errors import InputError


def check_writable(folder: Path, what: str) -> None:
    """Refuse a folder that cannot be created or written (``what`` names it in the sentence), leaving nothing
    behind: the nearest existing ancestor must be a folder this process can create files in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"The {what} location {folder} is inside a file ({existing}); choose another folder.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise InputError(
            f"Cannot write the {what} to {folder}: creating a file in {existing} fails ({exc.strerror}); "
            "choose a writable location."
        ) from None
