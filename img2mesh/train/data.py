"""Training pairs for Zero123++ from meshes: condition cut-outs and the target grids the model should draw for them.

``img2mesh train-data MESHES/ -o DATA/`` renders every GLB, glTF, OBJ and PLY file under MESHES/ with the project's
own rasteriser (:mod:`recon.render`), loaded and normalised as the reconstruction expects objects
(:mod:`recon.mesh_grids`: farthest vertex at 0.9, seen from distance 4). For each mesh it draws ``conditions``
viewpoints and writes, per viewpoint:

- ``condition_KK.png``: the object seen from azimuth a ~ U[0°, 360°) and elevation e ~ U[-20°, 45°], an RGBA
  cut-out cropped and padded exactly as ``img2mesh run`` prepares a photo (:func:`img2mesh.cutout.center_object`,
  the object's longer side 0.85 of a 512-px square), so the model is trained on what it sees at inference. Every
  azimuth is valid because the targets are relative to it, and the full circle lets every side be the front. The
  elevation range is InstantMesh's (zero123plus/InstantMesh issue 114): photos are taken from level to fairly
  high, rarely from below, and above ~45° the sides the targets show are hardly seen. Field of view and distance
  are those of the targets (30°, 4); framing is normalised by the crop, so a random distance would only change the
  perspective slightly.
- ``target_KK.png``: the six views at azimuths a + 30°, 90°, ..., 330° and the pose table's absolute elevations
  (v1.2: +20°/-10°), 320 px each, laid out as the pipeline's output (3 rows x 2 columns, 640 wide x 960 tall) over
  gray 127, which is what the model draws.

The condition and its targets share one fixed light (or none, ``lighting: unlit``). ``index.json`` lists the
settings, every mesh with its SHA-256 and samples, and the meshes that failed with the reason. Each mesh's folder
is written under a temporary name and renamed when complete, and the index is rewritten after every mesh, so an
interrupted run resumes where it stopped (same settings) and a bad mesh is reported and skipped.

:class:`PairDataset` reads the folder back for training, checking it first so that a corrupt or empty folder is
one sentence before any model loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from img2mesh.errors import InputError
from img2mesh.train.config import TrainDataConfig
from recon.mesh_grids import MESH_SUFFIXES

log = logging.getLogger(__name__)

INDEX = "index.json"
#: Version of the index layout; bumped when it changes incompatibly.
INDEX_FORMAT = 1
#: Settings that must match for a resumed run to add to an existing folder.
_SETTINGS = tuple(f for f in asdict(TrainDataConfig()) if f != "device")


@dataclass
class RenderReport:
    """What one ``train-data`` run did."""

    rendered: list[str]
    """Meshes rendered by this run."""
    kept: list[str]
    """Meshes already complete in the folder (resumed)."""
    skipped: dict[str, str]
    """Mesh file → why it was skipped."""


def find_meshes(folder: Path) -> list[Path]:
    """The mesh files under ``folder`` (recursively), sorted."""
    if not folder.is_dir():
        raise InputError(f"Mesh folder {folder} does not exist; pass a folder of GLB, glTF, OBJ or PLY files.")
    meshes = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)
    if not meshes:
        raise InputError(f"{folder} holds no GLB, glTF, OBJ or PLY files; put the meshes to train on there.")
    return meshes


def mesh_names(meshes: list[Path], root: Path) -> dict[Path, str]:
    """A unique folder name per mesh: its path under ``root`` without the suffix (with it, when two files share
    a stem)."""
    stems = [m.relative_to(root).with_suffix("").as_posix() for m in meshes]
    return {
        m: stem if stems.count(stem) == 1 else m.relative_to(root).as_posix().replace(".", "_")
        for m, stem in zip(meshes, stems, strict=True)
    }


def render_training_data(mesh_folder: Path, out: Path, config: TrainDataConfig, progress: bool = True) -> RenderReport:
    """Render every mesh under ``mesh_folder`` into training pairs in ``out`` (module docstring); resumable."""
    import torch
    from tqdm.auto import tqdm

    config.validate()
    meshes = find_meshes(mesh_folder)
    names = mesh_names(meshes, mesh_folder)
    settings = {k: v for k, v in asdict(config).items() if k in _SETTINGS}
    index = _resume_index(out, settings)
    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    done = {entry["name"]: entry for entry in index["meshes"]}
    report = RenderReport(rendered=[], kept=[], skipped={})
    entries: dict[str, dict[str, Any]] = {}
    for path in tqdm(meshes, desc="rendering", unit="mesh", disable=not progress):
        name, digest = names[path], file_digest(path)
        previous = done.get(name)
        if previous is not None and previous["sha256"] == digest and _complete(out, previous):
            entries[name] = previous
            report.kept.append(name)
            continue
        try:
            entries[name] = render_mesh_pairs(path, name, digest, out, config, device)
        except InputError as exc:
            report.skipped[path.relative_to(mesh_folder).as_posix()] = str(exc)
            log.info("skipped %s: %s", path, exc)
            continue
        report.rendered.append(name)
        _write_index(out, settings, list(entries.values()), report.skipped)
    _write_index(out, settings, list(entries.values()), report.skipped)
    return report


def render_mesh_pairs(
    path: Path, name: str, digest: str, out: Path, config: TrainDataConfig, device: str
) -> dict[str, Any]:
    """Render one mesh's pairs into ``out/name/`` (written under a temporary name, then renamed); its index entry."""
    from PIL import Image

    from img2mesh.cutout import center_object
    from recon.mesh_grids import load_normalised_mesh, render_grid, render_photo
    from recon.render import prepare_mesh

    try:
        prepared = prepare_mesh(load_normalised_mesh(path, config.up), device)
    except (ValueError, IndexError, KeyError, RuntimeError) as exc:  # malformed geometry that trimesh let through
        raise InputError(f"Could not prepare {path.name} for rendering ({exc}); check the file.") from None
    rng = np.random.default_rng([config.seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")])
    azimuths = rng.uniform(0.0, 360.0, config.conditions)
    elevations = rng.uniform(config.elevation_min, config.elevation_max, config.conditions)
    photos = render_photo(
        prepared, azimuths, elevations, config.condition_size, config.poses, config.lighting,
        supersample=config.supersample, device=device,
    )  # fmt: skip
    partial = out / ".partial" / name
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    samples, writes = [], []
    # PNG compression is most of a mesh's time once the rasteriser runs on a GPU; zlib releases the GIL.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as writers:
        for k, (azimuth, elevation, photo) in enumerate(zip(azimuths, elevations, photos, strict=True)):
            grid, _ = render_grid(
                prepared, config.poses, float(azimuth), config.view_size, config.lighting,
                supersample=config.supersample, device=device,
            )  # fmt: skip
            condition = center_object(Image.fromarray(photo, "RGBA"), config.object_share, config.condition_size)
            files = {"condition": f"{name}/condition_{k:02d}.png", "target": f"{name}/target_{k:02d}.png"}
            writes.append(writers.submit(condition.save, partial / Path(files["condition"]).name))
            writes.append(writers.submit(Image.fromarray(grid).save, partial / Path(files["target"]).name))
            samples.append({**files, "azimuth": round(float(azimuth), 3), "elevation": round(float(elevation), 3)})
    for write in writes:
        write.result()  # a failed write (disk full) raises here, before the folder counts as complete
    final = out / name
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(final)
    return {"name": name, "source": path.name, "sha256": digest, "samples": samples}


def file_digest(path: Path) -> str:
    """SHA-256 of a file (the data manifest records what each mesh was)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _complete(out: Path, entry: dict[str, Any]) -> bool:
    return all((out / s[key]).is_file() for s in entry["samples"] for key in ("condition", "target"))


def _resume_index(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The existing index of ``out`` when it was made with the same settings; an empty one for a new folder."""
    path = out / INDEX
    if not path.exists():
        if out.exists() and not out.is_dir():
            raise InputError(f"{out} is a file; pass a folder (new or made by train-data) for the training data.")
        return {"meshes": []}
    try:
        index = json.loads(path.read_text())
        old = index["settings"]
        if not isinstance(old, dict) or not isinstance(index["meshes"], list):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"{path} is not a train-data index; pass a new folder or delete the damaged one.") from None
    changed = sorted(k for k in settings if old.get(k) != settings[k])
    if changed:
        shown = ", ".join(f"{k} {old.get(k)!r} → {settings[k]!r}" for k in changed)
        raise InputError(f"{out} was rendered with other settings ({shown}); use a new folder or the same settings.")
    return index


def _write_index(out: Path, settings: dict[str, Any], entries: list[dict[str, Any]], skipped: dict[str, str]):
    out.mkdir(parents=True, exist_ok=True)
    index = {
        "format": INDEX_FORMAT,
        "settings": settings,
        "meshes": sorted(entries, key=lambda e: e["name"]),
        "skipped": [{"source": k, "reason": v} for k, v in sorted(skipped.items())],
    }
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX)


# ------------------------------------------------------------------------------------------------ reading back


@dataclass
class Pair:
    """One training pair as listed in the index."""

    mesh: str
    """Name of the mesh it shows."""
    condition: Path
    """RGBA condition cut-out."""
    target: Path
    """RGB target grid."""


def read_index(folder: Path) -> tuple[dict[str, Any], list[tuple[str, list[Pair]]]]:
    """Settings and (mesh name, pairs) of a train-data folder, checked: one sentence if it is missing, damaged or
    empty, or a file it lists is missing."""
    path = folder / INDEX
    if not folder.is_dir():
        raise InputError(f"Training data folder {folder} does not exist; make it with `img2mesh train-data MESHES/`.")
    if not path.is_file():
        raise InputError(f"{folder} has no {INDEX}; make training data with `img2mesh train-data MESHES/ -o {folder}`.")
    try:
        index = json.loads(path.read_text())
        settings = index["settings"]
        meshes = [
            (e["name"], [Pair(e["name"], folder / s["condition"], folder / s["target"]) for s in e["samples"]])
            for e in index["meshes"]
        ]
        view_size = int(settings["view_size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InputError(f"{path} is damaged (not a train-data index); render the data again.") from None
    meshes = [(name, pairs) for name, pairs in meshes if pairs]
    if not meshes:
        raise InputError(f"{path} lists no rendered meshes; run `img2mesh train-data` on a folder with meshes first.")
    for _, pairs in meshes:
        for pair in pairs:
            for file in (pair.condition, pair.target):
                if not file.is_file():
                    raise InputError(f"{file} listed in {path} is missing; run train-data again to re-render it.")
    settings["view_size"] = view_size
    return settings, meshes


class PairDataset:
    """Training pairs as (index, condition RGB on gray as PIL, target grid in [-1, 1] as a (3, H, W) tensor)."""

    def __init__(self, pairs: list[Pair], grid_size: tuple[int, int]) -> None:
        self.pairs = pairs
        self.grid_size = grid_size
        """(height, width) every target grid must have."""

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        import torch
        from PIL import Image, UnidentifiedImageError

        from img2mesh.zero123pp.pipeline import composite_on_gray

        pair = self.pairs[index]
        try:
            with Image.open(pair.condition) as opened:
                condition = composite_on_gray(opened.convert("RGBA"))
            with Image.open(pair.target) as opened:
                target = np.asarray(opened.convert("RGB"), dtype=np.float32)
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            raise InputError(f"Cannot read the training pair of {pair.target} ({exc}); render it again.") from None
        if target.shape[:2] != self.grid_size:
            raise InputError(
                f"{pair.target} is {target.shape[1]}x{target.shape[0]}, not the {self.grid_size[1]}x"
                f"{self.grid_size[0]} grid of the index; render the data again."
            )
        return index, condition, torch.from_numpy(target).permute(2, 0, 1) / 127.5 - 1.0


def collate_pairs(items):
    """A batch: pair indices, list of condition images, stacked target grids."""
    import torch

    indices, conditions, targets = zip(*items, strict=True)
    return list(indices), list(conditions), torch.stack(targets)
