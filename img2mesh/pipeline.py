"""The whole job from a photo: cut-out → Zero123++ views → posed views → reconstruction → export → preview.

:class:`Img2Mesh` holds what is expensive to set up — the diffusion model on its device — and exposes every stage
as its own method taking and returning plain objects, so that one loaded model serves any number of inputs and a
batch runner (``img2mesh batch``) can schedule the stages itself, e.g. fit the next object on the GPU while the CPU
finishes this one (:meth:`fit` is the GPU half of reconstruction, :meth:`finish` the CPU half). :meth:`run` chains
them for one input and writes this output folder::

    <out>/<stem>/input.png          the square RGBA cut-out the model was conditioned on
                 views.png          the raw 640x960 grid of six views
                 views/00..05.png   each view, RGBA with its mask (plus posed_views.npz, full precision)
                 transforms.json    the nerfstudio / instant-ngp dataset of the six posed views
                 mesh.glb           the textured mesh (or mesh.obj + .mtl + .png, or mesh.ply; with export.lods
                                    mesh_lod0.glb, mesh_lod1.glb, ... finest first)
                 preview.png        an off-screen render of the mesh
                 run.json           versions, model and commit, config, seed, seconds per stage, files, the
                                    asset's placement and textures (written last)

The folder is built under a temporary name and appears only when complete (:mod:`img2mesh.outputs`), with
``run.json`` written last, so an interrupted or failed input leaves nothing that looks finished.

Heavy imports (torch, diffusers, pyvista) happen in the methods that need them: ``import img2mesh`` stays light.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from img2mesh.config import Img2MeshConfig, config_to_dict, load_config
from img2mesh.errors import InputError
from img2mesh.run_record import ModelInfo, RunRecord, cache_commit, now

if TYPE_CHECKING:
    import torch
    import trimesh
    from PIL import Image

    from img2mesh.zero123pp.normals import NormalViews
    from recon.fit import Fields
    from recon.posed_views import PosedViews

log = logging.getLogger(__name__)

#: The stages of one input, in the order :meth:`Img2Mesh.run` runs them (the keys of ``run.json``'s timings).
STAGES = ("prepare_input", "generate_views", "pose_views", "fit", "finish", "export", "preview")

#: Base name of the mesh file(s) in an output folder.
MESH_NAME = "mesh"


class Img2Mesh:
    """The end-to-end pipeline: load the model once with :meth:`load`, then :meth:`run` it on any number of photos.

    ``progress`` shows a bar per stage (and the diffusion and fitting bars inside them); ``False`` runs silently.
    """

    def __init__(self, config: Img2MeshConfig | None = None, progress: bool = True) -> None:
        self.config = config or Img2MeshConfig()
        self.progress = progress
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self.model: ModelInfo | None = None
        self.load_seconds: float | None = None
        self._pipe: Any = None
        self._controlnet: Any = None

    # ------------------------------------------------------------------------------------------------ set-up

    def load(self, images: int = 1) -> Img2Mesh:
        """Resolve device and precision, find the weights (no download offline) and load the diffusion model once.

        ``images``: how many images this process will turn into views, which decides what ``multiview.compile:
        auto`` compiles (a batch repays a longer first compile; :func:`~img2mesh.zero123pp.fast_step.auto_mode`).
        """
        if self._pipe is not None:
            return self
        from img2mesh.zero123pp.weights import CONTROLNET_LAYOUT, resolve_model
        from recon.devices import resolve_device, resolve_dtype

        start = time.perf_counter()
        multiview = self.config.multiview
        # Device and weights first, before diffusers is imported: a missing GPU or model costs no import time.
        self.device = resolve_device(self.config.runtime.device)
        self.dtype = resolve_dtype(self.config.runtime.dtype, self.device)
        folder = resolve_model(multiview.model, multiview.revision)
        if multiview.normals:  # fail before any weights are read, not after the main model has loaded
            resolve_model(multiview.normals_model, layout=CONTROLNET_LAYOUT)
        if multiview.lora:
            from img2mesh.train.lora import adapter_folder, load_lora

            adapter_folder(multiview.lora)
        from img2mesh.zero123pp import Zero123PlusPipeline
        from img2mesh.zero123pp.fast_step import enable_fast_path
        from img2mesh.zero123pp.normals import load_normal_controlnet

        with _library_progress_bars(enabled=self.progress):
            pipe = Zero123PlusPipeline.from_pretrained(folder, torch_dtype=self.dtype, scheduler=multiview.scheduler)
        compile_mode = multiview.compile
        if multiview.lora:
            load_lora(pipe.unet, multiview.lora, merge=multiview.lora_merge)
            if not multiview.lora_merge:  # the fast path reads the projection weights directly: it would skip it
                compile_mode = "off"
        if pipe.config.version != self.config.views.poses:
            # The weights decide where the views' cameras are; posing them with the other table would be wrong.
            version = pipe.config.version
            log.warning("%s draws %s views; posing them with the %s table.", multiview.model, version, version)
            self.config.views = dataclasses.replace(self.config.views, poses=version)
        if multiview.normals and pipe.config.version != "v1.2":
            raise InputError(
                f"The normal ControlNet was trained for Zero123++ v1.2, but {multiview.model} is "
                f"{pipe.config.version}; use the v1.2 weights or turn multiview.normals off."
            )
        offload = multiview.offload and self.device.type == "cuda"
        if offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        enable_fast_path(pipe, compile_mode, offload=offload, images=images, steps=multiview.steps)
        if multiview.normals:
            self._controlnet = load_normal_controlnet(multiview.normals_model, torch_dtype=self.dtype)
        pipe.set_progress_bar_config(disable=not self.progress, leave=False, desc="diffusion")
        self._pipe = pipe
        self.model = ModelInfo(
            id=multiview.model, revision=multiview.revision, commit=cache_commit(folder), path=str(folder)
        )
        self.load_seconds = time.perf_counter() - start
        log.info("loaded %s on %s (%s) in %.1f s", multiview.model, self.device, self.dtype, self.load_seconds)
        return self

    def with_config(self, config: Img2MeshConfig) -> Img2Mesh:
        """This pipeline with another config for one job, sharing the loaded model (a server's per-job options).

        The keys that chose and loaded the model (weights, device, precision, fast path) must be the same.
        """
        other = copy.copy(self)
        other.config = config
        return other

    # ---------------------------------------------------------------------------------------------- stages

    def prepare_input(self, image: str | Path | Image.Image) -> Image.Image:
        """A photo (path or PIL image) → the square RGBA cut-out the model is conditioned on."""
        from img2mesh.cutout import load_image, preprocess

        if not hasattr(image, "size"):
            image = load_image(image)
        return preprocess(image, self.config.preprocess)

    def generate_views(self, cutout: Image.Image, seed: int | None = None) -> Image.Image:
        """The cut-out → Zero123++'s 640x960 grid of six views (the same seed gives the same views)."""
        import torch

        self.load()
        multiview = self.config.multiview
        # A CPU generator draws the same noise on every device, so a seed means the same views on CPU and GPU.
        generator = torch.Generator("cpu").manual_seed(self.config.runtime.seed if seed is None else seed)
        output = self._pipe(
            cutout,
            num_inference_steps=multiview.steps,
            guidance_scale=multiview.guidance,
            generator=generator,
            output_type="pil",
        )
        return output.images[0]

    def generate_normals(self, cutout: Image.Image, grid: Image.Image, seed: int | None = None) -> NormalViews | None:
        """Normal maps and alpha mattes of the grid's views from the normal ControlNet; None unless
        ``multiview.normals`` is on."""
        import torch

        from img2mesh.zero123pp.normals import generate_normals

        if not self.config.multiview.normals:
            return None
        self.load()
        multiview = self.config.multiview
        generator = torch.Generator("cpu").manual_seed(self.config.runtime.seed if seed is None else seed)
        return generate_normals(
            self._pipe,
            self._controlnet,
            cutout,
            grid,
            num_inference_steps=multiview.steps,
            guidance_scale=multiview.guidance,
            generator=generator,
        )

    def pose_views(self, grid: Image.Image, normals: NormalViews | None = None) -> PosedViews:
        """The grid → six posed views with masks and cameras; with ``normals``, its mattes are the masks."""
        from recon.posed_views import PosedViews

        if normals is None:
            return PosedViews.from_grid(grid, self.config.views)
        return PosedViews.from_grid(grid, self.config.views, masks=normals.alpha, normal_grid=normals.normal_grid)

    def fit(self, views: PosedViews) -> Fields:
        """Posed views → fitted signed-distance and colour fields (the GPU half of reconstruction)."""
        from recon.fit import fit_fields

        recon_device = self._recon_device()
        fields = fit_fields(views, self.config.recon, recon_device, self.progress, seed=self.config.runtime.seed)
        if fields.registration_rms is not None:
            log.info("registration: %s", fields.registration_sentence())
        return fields

    def finish(self, fields: Fields, views: PosedViews, device: str | None = None) -> list[trimesh.Trimesh]:
        """Fields → clean, decimated, UV-textured meshes in world z-up (the CPU half of reconstruction): the levels of
        detail, finest first (one mesh unless ``export.lods``), with the albedo and normal map ``export`` asks for.

        The texture bake runs on ``device``: by default the fitting device (fastest for one job); a batch runner
        passes "cpu" to keep the GPU free for the next object's fit.
        """
        from recon.asset import finish_asset

        device = device or fields.device
        config = self.config
        timings: dict[str, float] = {}
        meshes = finish_asset(fields, views, config.mesh, config.texture, config.export, device=device, timings=timings)
        log.info("finish: %s", "  ".join(f"{step} {seconds:.2f} s" for step, seconds in timings.items()))
        return meshes

    def export(
        self, meshes: trimesh.Trimesh | list[trimesh.Trimesh], path: str | Path, format: str | None = None
    ) -> list[Path]:
        """Write the mesh, or the levels of detail of :meth:`finish` (``<stem>_lod<i>``), in glTF axes, standing on
        y = 0 and ``export.height`` metres high, to ``path``; ``format`` defaults to the path's suffix, else the
        config's. Returns every file written, each level's mesh file first."""
        from recon.export import export_levels

        path = Path(path)
        if format is None and not path.suffix:
            format = self.config.export.format
        meshes = [meshes] if not isinstance(meshes, list) else meshes
        return export_levels(meshes, path, format=format, height=self.config.export.height)

    def export_record(self, meshes: list[trimesh.Trimesh]) -> dict[str, Any]:
        """``run.json``'s account of the exported asset (placement, colour space, texture sizes, texel density)."""
        from recon.export import export_record

        record = export_record(meshes, self.config.export)
        for level in record["levels"]:
            log.info("level of %d faces: %s", level["faces"], level)
        return record

    def preview(self, mesh_path: str | Path, out: str | Path) -> Path:
        """An off-screen render of the exported mesh file into the PNG ``out`` (the same code as ``img2mesh show``)."""
        from img2mesh.viewer import save_screenshot

        return save_screenshot(mesh_path, out, self.config.preview)

    def save_views(
        self,
        folder: Path,
        cutout: Image.Image,
        grid: Image.Image,
        views: PosedViews,
        normals: NormalViews | None = None,
    ) -> dict[str, Any]:
        """Write the 2D half of an output folder (``input.png``, ``views.png``, ``normals.png``, ``views/``,
        ``transforms.json``); returns the ``outputs`` entries of ``run.json`` for them. ``run`` and ``batch`` share
        it, so their folders cannot drift apart."""
        from recon.dataset import write_dataset

        cutout.save(folder / "input.png")
        grid.save(folder / "views.png")
        views.save(folder / "views")
        dataset = write_dataset(views, folder, images_from=folder / "views")  # the same PNGs: copied, not re-encoded
        outputs: dict[str, Any] = {
            "input": "input.png",
            "views_grid": "views.png",
            "views": [f"views/{i:02d}.png" for i in range(len(views))],
            "dataset": dataset.relative_to(folder).as_posix(),
        }
        if normals is not None:
            normals.normal_grid.save(folder / "normals.png")
            outputs["normals_grid"] = "normals.png"
        return outputs

    def save_mesh(
        self,
        folder: Path,
        fields: Fields,
        views: PosedViews,
        record: RunRecord,
        timed: Callable[[str], contextlib.AbstractContextManager],
        device: str | None = None,
    ) -> list[trimesh.Trimesh]:
        """Write the 3D half of an output folder (the mesh file(s), ``preview.png``) from fitted fields, each stage
        under ``timed(stage)``, their entries into ``record.outputs`` and the asset's into ``record.export``; returns
        the levels of detail of :meth:`finish`. ``device``: see :meth:`finish`. With :meth:`save_views`, what ``run``
        and ``batch`` share, so their folders cannot drift."""
        record.registration = fields.registration_summary()
        with timed("finish"):
            meshes = self.finish(fields, views, device)
        with timed("export"):
            files = self.export(meshes, folder / f"{MESH_NAME}.{self.config.export.format}")
            record.outputs["mesh"] = [p.relative_to(folder).as_posix() for p in files]
            record.export = self.export_record(meshes)
        if self.config.preview.enabled:
            with timed("preview"):
                self.preview(files[0], folder / "preview.png")
            record.outputs["preview"] = "preview.png"
        return meshes

    # --------------------------------------------------------------------------------------------- the job

    def run(self, image: str | Path | Image.Image, out_dir: str | Path, export: str | Path | None = None) -> RunRecord:
        """Every stage for one photo, written into the folder ``out_dir`` (replaced whole when it already exists).

        ``export`` also writes the mesh to that path (format from its suffix). Returns the record saved as
        ``run.json``; an :class:`InputError` leaves no folder behind.
        """
        from img2mesh.cutout import load_image
        from img2mesh.outputs import atomic_output_dir

        out_dir = Path(out_dir)
        photo = image if hasattr(image, "size") else load_image(image)  # a bad file costs no model load
        self.load()
        record = RunRecord(
            input=str(image) if isinstance(image, str | Path) else "<image>",
            model=self.model,
            config=config_to_dict(self.config),
            seed=self.config.runtime.seed,
            device=str(self.device),
        )
        with atomic_output_dir(out_dir) as work, self._stage_bar(out_dir.name) as bar:
            with self._timed("prepare_input", record, bar):
                cutout = self.prepare_input(photo)
            with self._timed("generate_views", record, bar):
                grid = self.generate_views(cutout)
                normals = self.generate_normals(cutout, grid)
            with self._timed("pose_views", record, bar):
                views = self.pose_views(grid, normals)
                record.outputs = self.save_views(work, cutout, grid, views, normals)
            with self._timed("fit", record, bar):
                fields = self.fit(views)
            meshes = self.save_mesh(work, fields, views, record, lambda stage: self._timed(stage, record, bar))
            if export is not None:
                copies = self.export(meshes, export)  # written whole or not at all, like every export
                record.outputs["export"] = [str(path.resolve()) for path in copies]
            record.finished = now()
            record.save(work)  # last: a folder with run.json is complete
        log.info("%s: done in %.1f s", out_dir, record.total_seconds)
        return record

    # ------------------------------------------------------------------------------------------- internals

    def _recon_device(self) -> str:
        """The reconstruction's device: its own config when set, else the device the model runs on."""
        if self.config.recon.device != "auto":
            return self.config.recon.device
        return self.config.runtime.device if self.device is None else str(self.device)

    @contextlib.contextmanager
    def _stage_bar(self, name: str) -> Iterator[Any]:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(STAGES), desc=name, unit="stage", disable=not self.progress, leave=False)
        try:
            yield bar
        finally:
            bar.close()

    @contextlib.contextmanager
    def _timed(self, stage: str, record: RunRecord, bar: Any) -> Iterator[None]:
        bar.set_postfix_str(stage)
        start = time.perf_counter()
        yield
        record.timings[stage] = time.perf_counter() - start
        bar.update(1)
        log.info("%-15s %7.2f s", stage, record.timings[stage])


@contextlib.contextmanager
def _library_progress_bars(enabled: bool) -> Iterator[None]:
    """Silence the weight-loading bars of transformers and diffusers while ``enabled`` is False, then restore them."""
    if enabled:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [lib for lib in (transformers_logging, diffusers_logging) if lib.is_progress_bar_enabled()]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()


def run(
    image: str | Path,
    out_dir: str | Path = "out",
    config: str | Path | Img2MeshConfig | None = None,
    overrides: dict[str, Any] | None = None,
    export: str | Path | None = None,
    progress: bool = True,
) -> RunRecord:
    """The whole job for one photo into ``out_dir/<stem>/``, like ``img2mesh run IMAGE -o OUT [--export PATH]``.

    ``config`` is a preset name, a YAML path or an :class:`Img2MeshConfig`; ``overrides`` sets dotted keys on top
    (``{"multiview.steps": 28, "mesh.faces": 5000}``). For many photos build one :class:`Img2Mesh` and call
    :meth:`Img2Mesh.run` on each, so the model loads once.
    """
    if isinstance(config, Img2MeshConfig):
        if overrides:
            raise InputError("Pass overrides with a config name or path, not with an Img2MeshConfig object.")
        cfg = config
    else:
        cfg = load_config(config, overrides)
    image = Path(image)
    return Img2Mesh(cfg, progress=progress).run(image, Path(out_dir) / image.stem, export=export)
