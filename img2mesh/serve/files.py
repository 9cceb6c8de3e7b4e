"""Which files of a job the API hands out, and from where: no request can name a path outside the job's folder.

A file is asked for by one of a fixed set of names (:data:`FILES`), never by a path, and the job by an id that must
match :data:`JOB_ID` before it is looked up; so neither part of ``/api/jobs/{id}/files/{name}`` can climb out of
the server's folder. A finished job's files come from its folder (``<root>/<id>/``, ``img2mesh run``'s layout); a
running job's cut-out and grid from its live folder until then.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

#: What a job id looks like (random hex).
JOB_ID = re.compile(r"[0-9a-f]{16}")

#: Name in the API → media type, for the files of a job's folder.
FILES = {
    "mesh.glb": "model/gltf-binary",
    "mesh.obj": "text/plain",
    "mesh.ply": "application/octet-stream",
    "views.png": "image/png",
    "input.png": "image/png",
    "preview.png": "image/png",
    "normals.png": "image/png",
    "transforms.json": "application/json",
    "run.json": "application/json",
}

#: Name in the API of the zip of a finished job's whole folder.
ZIP_NAME = "folder.zip"

#: Files a running job shows before its folder is complete.
LIVE_FILES = ("input.png", "views.png")


def find_file(folder: Path, live: Path, name: str) -> Path | None:
    """The file ``name`` of a job: from its finished ``folder``, else (cut-out, grid) from its ``live`` folder."""
    if name not in FILES:
        return None
    for base in (folder, live) if name in LIVE_FILES else (folder,):
        path = base / name
        if path.is_file():
            return path
    return None


def available(folder: Path, live: Path) -> list[str]:
    """The API names of the files a job has now (the zip once its folder is complete)."""
    names = [name for name in FILES if find_file(folder, live, name) is not None]
    return [*names, ZIP_NAME] if folder.is_dir() else names


def zip_folder(folder: Path, prefix: str) -> bytes:
    """The whole folder as a zip, its files under ``prefix/``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()
