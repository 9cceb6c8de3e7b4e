"""``run.json``: what one run of the pipeline did, written last into its output folder.

The record answers the questions asked of a mesh weeks later — which weights (hub id and the exact commit the
Hugging Face cache resolved), which code (img2mesh, torch, diffusers, transformers versions), which settings (the
whole config, the seed), how long each stage took, and which files came out — and it doubles as the completion
marker: the output folder only appears once everything is in it (:mod:`img2mesh.outputs`), and a folder whose
``run.json`` loads and names files that exist is a finished result that ``--skip-existing`` may keep.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

#: File name of the record inside an output folder.
RUN_JSON = "run.json"

#: Version of the record's layout; bump it when a field changes meaning.
SCHEMA_VERSION = 1

#: Distributions whose versions are recorded.
RECORDED_PACKAGES = ("img2mesh", "torch", "diffusers", "transformers", "trimesh", "pyvista")


@dataclass
class ModelInfo:
    """The diffusion weights a run used."""

    id: str
    """The ``--model`` argument: a hub id or a local folder."""
    revision: str | None = None
    """The requested revision (branch, tag or commit), None for the default branch."""
    commit: str | None = None
    """The commit the weights were read from, when they came from the Hugging Face cache."""
    path: str | None = None
    """The folder the weights were read from."""


@dataclass
class RunRecord:
    """Everything ``run.json`` holds about one input's run."""

    input: str
    """The input photo as given."""
    model: ModelInfo | None
    """The diffusion weights, or None for a run that started from views."""
    config: dict[str, Any]
    """The whole configuration, every section and key."""
    seed: int
    """Seed of every random draw."""
    device: str
    """Device the GPU stages ran on."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage, in the order they ran."""
    outputs: dict[str, str | list[str]] = field(default_factory=dict)
    """Files written, by role (input, views, mesh, ...), relative to the output folder."""
    export: dict[str, Any] = field(default_factory=dict)
    """The exported asset: height in metres, origin, axes, base colour (sRGB), and per level of detail its faces,
    texture side and texel density (:func:`recon.export.export_record`)."""
    registration: dict[str, float | int] = field(default_factory=dict)
    """How far the generated views disagreed, as the fit registered them: ``disagreement_px`` and ``nodes``
    (``Fields.registration_summary`` in :mod:`recon.fit`); empty without registration."""
    versions: dict[str, str | None] = field(default_factory=lambda: package_versions())
    """Versions of Python and of the recorded packages."""
    started: str = field(default_factory=lambda: now())
    """UTC time the run started (ISO 8601)."""
    finished: str | None = None
    """UTC time the run finished (ISO 8601)."""
    schema: int = SCHEMA_VERSION
    """Layout version of this record."""

    @property
    def total_seconds(self) -> float:
        """Sum of the stage timings."""
        return sum(self.timings.values())

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/run.json`` (the last file of a run)."""
        path = Path(folder) / RUN_JSON
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> RunRecord:
        """Read ``folder/run.json``."""
        data = json.loads((Path(folder) / RUN_JSON).read_text())
        model = data.pop("model", None)
        return cls(model=ModelInfo(**model) if model else None, **data)


def is_complete(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished run: a readable ``run.json`` whose listed outputs all exist."""
    folder = Path(folder)
    try:
        record = RunRecord.load(folder)
    except (OSError, ValueError, TypeError):
        return False
    if record.finished is None:
        return False
    for value in record.outputs.values():
        for name in [value] if isinstance(value, str) else value:
            # Absolute paths are copies outside the folder (--export); the folder is complete without them.
            if not Path(name).is_absolute() and not (folder / name).exists():
                return False
    return True


def package_versions() -> dict[str, str | None]:
    """Python's version and each recorded package's, None where one is not installed."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cache_commit(path: str | Path) -> str | None:
    """The commit of a Hugging Face cache snapshot folder (``.../snapshots/<commit>``), None for other folders."""
    path = Path(path)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.name
    return None


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")
