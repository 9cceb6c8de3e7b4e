"""Output locations checked before any work: a light module (no trimesh, no torch), so a command can refuse an
unwritable folder or an unknown mesh format before its heavy imports; :mod:`recon.export` checks its targets with it
too."""

from __future__ import annotations

import tempfile
from pathlib import Path

from recon.config import FORMATS
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


def export_target(path: str | Path, format: str | None = None) -> tuple[Path, str]:
    """The file that :func:`recon.export.export_mesh` will write and its format, checked before any work is spent on
    the mesh: a known format, and a folder that exists and is writable or can be created (the export creates it)."""
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise InputError(f"Cannot export {path.name}: unknown mesh format {fmt!r}; use .glb, .obj or .ply.")
    if path.suffix.lower() != f".{fmt}":
        path = path.with_suffix(f".{fmt}")
    if path.is_dir():
        raise InputError(f"Cannot export to {path}: it is a folder; name a mesh file such as {path / 'mesh.glb'}.")
    check_writable(path.parent, "export")
    return path, fmt
