"""One item's work cut into the three phases a batch runner schedules on different resources.

``img2mesh run`` does an input's stages one after another. A batch keeps the GPU busy by overlapping them across
items, so the stages of :class:`~img2mesh.pipeline.Img2Mesh` are grouped by the resource they hold:

1. :func:`make_views` (GPU, needs the loaded diffusion model): photo → cut-out → Zero123++ grid → posed views.
2. :func:`fit_item` (GPU, no model): posed views → fitted fields (moved to the CPU, so they can travel).
3. :func:`write_item` (CPU): fields → mesh, UV texture, export, preview, and the whole output folder.

Phases 1 and 2 write nothing; what they produce (:class:`PosedItem`, :class:`FittedItem`) is plain picklable data
handed to the next phase, in another thread, process or Ray worker. Phase 3 writes the item's folder in the layout
of ``img2mesh run`` under a temporary name and renames it when complete, ``run.json`` last
(:mod:`img2mesh.outputs`), so a job killed at any moment leaves no item that looks finished.

Fault injection (for tests and drills, never set in production): ``IMG2MESH_BATCH_CRASH=PHASE:NAME[,...]`` makes the
worker process running phase ``views``, ``fit`` or ``write`` of the item whose key or photo stem is ``NAME`` exit
at once (``os._exit``), as a segfault or the out-of-memory killer would; runners read it once on the driver and
pass it to their workers as :class:`CrashPlan`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from img2mesh.batch.inputs import BatchItem, local_path
from img2mesh.batch.manifest import ItemRecord
from img2mesh.errors import InputError
from img2mesh.run_record import ModelInfo, RunRecord, now

if TYPE_CHECKING:
    from PIL import Image

    from img2mesh.pipeline import Img2Mesh
    from img2mesh.zero123pp.normals import NormalViews
    from recon.fit import Fields
    from recon.posed_views import PosedViews

#: Environment variable holding the fault-injection plan (see the module docstring).
CRASH_ENV = "IMG2MESH_BATCH_CRASH"

#: Exit status of a worker killed by fault injection.
CRASH_EXIT_CODE = 70

Phase = Literal["views", "fit", "write"]
PHASES: tuple[Phase, ...] = ("views", "fit", "write")


@dataclass(frozen=True)
class CrashPlan:
    """Which (phase, item name) pairs kill their worker process; empty in normal runs."""

    points: frozenset[tuple[str, str]] = frozenset()
    """Pairs of phase and item name (key or photo stem)."""

    @classmethod
    def from_env(cls) -> CrashPlan:
        """The plan in ``$IMG2MESH_BATCH_CRASH`` (empty when unset)."""
        points = set()
        for part in os.environ.get(CRASH_ENV, "").split(","):
            phase, sep, name = part.strip().partition(":")
            if not part.strip():
                continue
            if not sep or phase not in PHASES or not name:
                raise InputError(f"{CRASH_ENV}={part!r} must look like PHASE:NAME with PHASE one of {PHASES}.")
            points.add((phase, name))
        return cls(frozenset(points))

    def maybe_crash(self, phase: Phase, item: BatchItem) -> None:
        """End this process at once when the plan names this phase and item."""
        stem = item.key.rsplit("-", 1)[0]
        if (phase, item.key) in self.points or (phase, stem) in self.points:
            os._exit(CRASH_EXIT_CODE)


@dataclass
class PosedItem:
    """What phase 1 hands on: one item with its cut-out, raw grid and posed views."""

    item: BatchItem
    cutout: Image.Image
    grid: Image.Image
    normals: NormalViews | None
    """Normal maps and mattes when ``multiview.normals`` is on."""
    views: PosedViews | None
    """The posed views; None until :func:`pose_item` ran."""
    model: ModelInfo | None
    """The diffusion weights that made the views."""
    device: str
    """Device the GPU phases ran on."""
    started: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class FittedItem:
    """What phase 2 hands on: phase 1's output and the fitted fields (on the CPU)."""

    posed: PosedItem
    fields: Fields


class ItemFailed(Exception):
    """An item's phase failed; carries the manifest record to write for it."""

    def __init__(self, record: ItemRecord) -> None:
        super().__init__(record.error)
        self.record = record

    def __reduce__(self):
        return type(self), (self.record,)  # travels back from a worker process whole


def item_pipeline(pipe: Img2Mesh, item: BatchItem) -> Img2Mesh:
    """``pipe`` with the item's own config when it carries one, sharing the loaded model."""
    return pipe if item.config is None else pipe.with_config(item.config)


def prepare_cutout(pipe: Img2Mesh, item: BatchItem, cache: Path) -> Image.Image:
    """Fetch (when remote) and preprocess the item's photo; CPU work a runner may do ahead of the GPU."""
    return item_pipeline(pipe, item).prepare_input(local_path(item, cache))


def make_views(
    pipe: Img2Mesh, item: BatchItem, cache: Path, crash: CrashPlan, cutout: Image.Image | None = None
) -> PosedItem:
    """Phase 1: photo → cut-out → Zero123++ grid → posed views. Raises :class:`ItemFailed`."""
    return pose_item(pipe, make_grid(pipe, item, cache, crash, cutout))


def make_grid(
    pipe: Img2Mesh, item: BatchItem, cache: Path, crash: CrashPlan, cutout: Image.Image | None = None
) -> PosedItem:
    """The GPU part of phase 1: photo → cut-out → Zero123++ grid (``views`` left None). Raises :class:`ItemFailed`."""
    started, timings = now(), {}
    try:
        crash.maybe_crash("views", item)
        pipe = item_pipeline(pipe.load(), item)
        if cutout is None:
            cutout = _timed(timings, "prepare_input", prepare_cutout, pipe, item, cache)
        grid = _timed(timings, "generate_views", pipe.generate_views, cutout)
        normals = pipe.generate_normals(cutout, grid)
    except Exception as exc:
        raise ItemFailed(failure_record(item, exc, started, timings)) from None
    return PosedItem(item, cutout, grid, normals, None, pipe.model, str(pipe.device), started, timings)


def pose_item(pipe: Img2Mesh, made: PosedItem) -> PosedItem:
    """The CPU part of phase 1: the grid → posed views with masks and cameras. Raises :class:`ItemFailed`."""
    try:
        pipe = item_pipeline(pipe, made.item)
        made.views = _timed(made.timings, "pose_views", pipe.pose_views, made.grid, made.normals)
    except Exception as exc:
        raise ItemFailed(failure_record(made.item, exc, made.started, made.timings)) from None
    return made


def fit_item(pipe: Img2Mesh, made: PosedItem, crash: CrashPlan) -> FittedItem:
    """Phase 2: posed views → fitted fields. Raises :class:`ItemFailed`."""
    try:
        crash.maybe_crash("fit", made.item)
        pipe = item_pipeline(pipe, made.item)
        fields = _timed(made.timings, "fit", pipe.fit, made.views)
    except Exception as exc:
        raise ItemFailed(failure_record(made.item, exc, made.started, made.timings)) from None
    return FittedItem(made, fields)


def write_item(
    pipe: Img2Mesh, fitted: FittedItem, out_root: Path, crash: CrashPlan, bake_device: str | None = "cpu"
) -> ItemRecord:
    """Phase 3: mesh, texture, export, preview, and the item's complete output folder. Never raises for the item.

    The texture is baked on ``bake_device``: the CPU by default, as this phase runs beside the GPU phases of the
    next items and must not compete with them; None bakes where the fields are (an item with nothing behind it).
    """
    made = fitted.posed
    try:
        crash.maybe_crash("write", made.item)
        return _write_folder(pipe, fitted, out_root, bake_device)
    except Exception as exc:
        return failure_record(made.item, exc, made.started, made.timings)


def _write_folder(pipe: Img2Mesh, fitted: FittedItem, out_root: Path, bake_device: str | None) -> ItemRecord:
    from img2mesh.config import config_to_dict
    from img2mesh.outputs import atomic_output_dir

    made = fitted.posed
    pipe = item_pipeline(pipe, made.item)
    timings = made.timings
    folder = out_root / made.item.key
    record = RunRecord(
        input=made.item.source,
        model=made.model,
        config=config_to_dict(pipe.config),
        seed=pipe.config.runtime.seed,
        device=made.device,
        started=made.started,
    )
    with atomic_output_dir(folder) as work:
        record.outputs = pipe.save_views(work, made.cutout, made.grid, made.views, made.normals)
        timer = functools.partial(_timer, timings)
        pipe.save_mesh(work, fitted.fields, made.views, record, timer, device=bake_device)
        record.timings = dict(timings)
        record.finished = now()
        record.save(work)  # last: a folder with run.json is complete
    files = sorted(p.relative_to(out_root).as_posix() for p in folder.rglob("*") if p.is_file())
    return ItemRecord(
        key=made.item.key,
        input=made.item.source,
        status="done",
        timings=dict(timings),
        outputs=files,
        started=made.started,
        finished=record.finished,
        worker=worker_name(),
    )


def failure_record(item: BatchItem, exc: BaseException, started: str | None, timings: dict[str, float]) -> ItemRecord:
    """The manifest record of an item that raised: bad input gets its sentence, a bug its type and traceback."""
    if isinstance(exc, InputError):
        error, trace = str(exc), None
    else:
        error = f"Unexpected {type(exc).__name__}: {exc}".strip().rstrip(":")
        trace = "".join(traceback.format_exception(exc))
    return ItemRecord(
        key=item.key,
        input=item.source,
        status="failed",
        error=error,
        traceback=trace,
        timings=dict(timings),
        started=started,
        finished=now(),
        worker=worker_name(),
    )


def lost_record(item: BatchItem, error: str) -> ItemRecord:
    """The record of an item whose worker never returned it (segfault, out of memory, killed), with the runner's why."""
    return ItemRecord(key=item.key, input=item.source, status="failed", error=error, finished=now())


def worker_name() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def _timer(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - start


def _timed(timings: dict[str, float], stage: str, function, *args):
    with _timer(timings, stage):
        return function(*args)
