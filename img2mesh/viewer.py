"""PyVista preview of exported meshes: interactive window, off-screen screenshot, turntable.

One loader serves every format the exporter writes, each through the reader that keeps its appearance: GLB/glTF
through VTK's glTF importer (PBR base-colour texture), OBJ through the OBJ importer (its MTL and texture), PLY
through ``pyvista.read`` with its per-vertex colours. The camera is framed on the loaded bounds in the glTF
convention of the exported files (+Y up, the side seen in the input photo facing +Z; see :mod:`recon.cameras`), so
``preview.png`` after ``img2mesh run`` shows the object the way the photo did, turned a little to show its depth.

PyVista renders off-screen on machines without a display (CI, servers): screenshots and turntables always do, and
only the interactive window needs a display, which is checked up front so the user gets a sentence, not a VTK crash.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from img2mesh.errors import InputError
from recon.config import check_range

if TYPE_CHECKING:
    import numpy as np
    import pyvista

#: Mesh formats the viewer opens, by file suffix.
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply")

#: Turntable formats, by file suffix.
TURNTABLE_SUFFIXES = (".gif", ".mp4")


@dataclass
class PreviewConfig:
    """The preview image written next to the mesh, and the defaults of ``img2mesh show``."""

    enabled: bool = True
    """Write ``preview.png`` after export."""
    size: int = 768
    """Side of the square preview image in pixels."""
    azimuth: float = 30.0
    """Camera azimuth in degrees about the up axis; 0 looks at the side seen in the input photo."""
    elevation: float = 20.0
    """Camera elevation in degrees above the object's centre."""
    background: str = "white"
    """Background colour: a name ("white") or a hex code ("#7f7f7f")."""
    turntable_frames: int = 48
    """Frames of one full turn in a turntable animation."""
    turntable_fps: int = 24
    """Frame rate of a turntable animation."""

    def validate(self) -> None:
        """Raise :class:`~recon.config.ConfigValueError` for the first value out of range."""
        check_range("size", self.size, 64, 8192)
        check_range("turntable_frames", self.turntable_frames, 1, 3600)
        check_range("turntable_fps", self.turntable_fps, 1, 240)


def has_display() -> bool:
    """Whether an interactive window can open here (Linux needs an X11 or Wayland display)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _pyvista():
    try:
        import pyvista
    except ImportError:
        raise InputError("The viewer needs PyVista; install it with `pip install pyvista`.") from None
    # VTK logs an X-server warning before it falls back to off-screen rendering; it is noise for our users.
    pyvista.vtk_verbosity("off")
    if not has_display():
        pyvista.OFF_SCREEN = True
    return pyvista


def check_mesh_path(path: str | Path) -> Path:
    """``path`` as a readable mesh file of a format the viewer opens, or an InputError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Mesh file {path} does not exist; pass the path of a .glb, .obj or .ply file.")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise InputError(f"Cannot view {path.name}: the viewer opens {', '.join(MESH_SUFFIXES)} files.")
    return path


def add_mesh_file(plotter: pyvista.Plotter, path: str | Path) -> None:
    """Load a mesh file into ``plotter`` with its texture or vertex colours."""
    pv = _pyvista()
    path = check_mesh_path(path)
    before = set(plotter.renderer.actors)
    # VTK reports a corrupt file through its log, PyVista's reader through logging and a warning, and both carry on
    # with nothing loaded: catch all three and say it in the sentence below.
    with pv.VtkErrorCatcher(send_to_logging=False) as vtk_errors, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.ERROR)
        try:
            _load(plotter, pv, path)
        finally:
            logging.disable(logging.NOTSET)
    added = [actor for name, actor in plotter.renderer.actors.items() if name not in before]
    if sum(_points(actor) for actor in added) == 0 or not _has_extent(plotter.bounds):
        if vtk_errors.error_events:
            reason = vtk_errors.error_events[0].alert.strip().splitlines()[-1].removeprefix("(nullptr): ")
            raise InputError(f"Mesh file {path} cannot be read ({reason}); re-export it or pass another file.")
        raise InputError(f"Mesh file {path} holds no geometry to show; re-export it or pass another file.")


def _load(plotter: pyvista.Plotter, pv, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in (".glb", ".gltf"):
        plotter.import_gltf(str(path))
    elif suffix == ".obj":
        mtl = path.with_suffix(".mtl")
        plotter.import_obj(str(path), str(mtl) if mtl.is_file() else None)
        # VTK's OBJ importer turns "Ka 1 1 1" into full ambient on top of full diffuse, which washes the texture
        # out to white; rebalance so the texture reads as it does in the glTF (PBR) path.
        for actor in plotter.renderer.actors.values():
            actor.GetProperty().SetAmbient(0.3)
            actor.GetProperty().SetDiffuse(0.7)
    else:
        mesh = pv.read(str(path))
        colours = next((name for name in ("RGBA", "RGB") if name in mesh.point_data), None)
        if colours is not None:
            plotter.add_mesh(mesh, scalars=colours, rgb=True, smooth_shading=True)
        else:
            plotter.add_mesh(mesh, color="lightgray", smooth_shading=True)


def _points(actor) -> int:
    """Points of the data an actor draws (its mapper's input, computed now if it comes from a filter; 0 without)."""
    mapper = actor.GetMapper()
    if mapper is None:
        return 0
    mapper.Update()
    data = mapper.GetInput()
    return data.GetNumberOfPoints() if data is not None and hasattr(data, "GetNumberOfPoints") else 0


def _has_extent(bounds) -> bool:
    return all(math.isfinite(b) for b in bounds) and max(bounds[1] - bounds[0], bounds[3] - bounds[2]) > 0


def frame_camera(plotter: pyvista.Plotter, azimuth: float, elevation: float, view_angle: float = 30.0) -> None:
    """Point the camera at the loaded bounds from ``azimuth``/``elevation`` (glTF axes: +Y up, photo side +Z)."""
    x0, x1, y0, y1, z0, z1 = plotter.bounds
    centre = ((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2)
    radius = 0.5 * math.dist((x0, y0, z0), (x1, y1, z1))
    # Distance at which the bounding sphere just fits the field of view, plus a small margin.
    distance = 1.08 * radius / math.sin(math.radians(view_angle) / 2)
    az, el = math.radians(azimuth), math.radians(elevation)
    direction = (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))
    position = tuple(c + distance * d for c, d in zip(centre, direction, strict=True))
    plotter.camera_position = [position, centre, (0.0, 1.0, 0.0)]
    plotter.camera.view_angle = view_angle
    plotter.reset_camera_clipping_range()


def build_plotter(
    path: str | Path, config: PreviewConfig | None = None, off_screen: bool = True, size: int | None = None
) -> pyvista.Plotter:
    """A plotter showing the mesh file, framed from the configured viewpoint."""
    pv = _pyvista()
    config = config or PreviewConfig()
    side = size or config.size
    plotter = pv.Plotter(off_screen=off_screen, window_size=(side, side))
    try:
        add_mesh_file(plotter, path)
        try:
            plotter.set_background(config.background)
        except ValueError:
            raise InputError(f"Background {config.background!r} is not a colour; use a name or a hex code.") from None
        frame_camera(plotter, config.azimuth, config.elevation)
    except BaseException:
        plotter.close()
        raise
    return plotter


def render_image(path: str | Path, config: PreviewConfig | None = None, size: int | None = None) -> np.ndarray:
    """An off-screen RGB render ``(size, size, 3)`` uint8 of the mesh file."""
    plotter = build_plotter(path, config, off_screen=True, size=size)
    try:
        return plotter.screenshot(None, return_img=True)
    finally:
        plotter.close()


def save_screenshot(path: str | Path, out: str | Path, config: PreviewConfig | None = None) -> Path:
    """Render the mesh file off-screen into the PNG ``out`` (written whole or not at all)."""
    from PIL import Image

    out = Path(out)
    image = Image.fromarray(render_image(path, config))
    _write_atomically(out, lambda tmp: image.save(tmp, format="PNG"))
    return out


def save_turntable(path: str | Path, out: str | Path, config: PreviewConfig | None = None) -> Path:
    """One full turn about the up axis, rendered off-screen into ``out`` (.gif, or .mp4 with imageio-ffmpeg)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in TURNTABLE_SUFFIXES:
        raise InputError(f"Turntable {out.name} needs a .gif or .mp4 name.")
    config = config or PreviewConfig()
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401  (the MP4 writer of imageio)
        except ImportError:
            raise InputError("Writing MP4 needs imageio-ffmpeg; run `pip install imageio-ffmpeg`.") from None
    plotter = build_plotter(path, config, off_screen=True)
    try:

        def write(tmp: Path) -> None:
            if suffix == ".gif":
                plotter.open_gif(str(tmp), fps=config.turntable_fps)
            else:
                plotter.open_movie(str(tmp), framerate=config.turntable_fps)
            for i in range(config.turntable_frames):
                frame_camera(plotter, config.azimuth + 360.0 * i / config.turntable_frames, config.elevation)
                plotter.write_frame()
            plotter.mwriter.close()

        _write_atomically(out, write)
    finally:
        plotter.close()
    return out


def add_turntable_key(plotter: pyvista.Plotter, config: PreviewConfig, key: str = "t") -> None:
    """Bind ``key`` to start and stop spinning the camera about the up axis."""
    state = {"spinning": False, "azimuth": config.azimuth}
    step = 360.0 / config.turntable_frames

    def toggle() -> None:
        state["spinning"] = not state["spinning"]

    def tick(_step: int) -> None:
        if state["spinning"]:
            state["azimuth"] += step
            frame_camera(plotter, state["azimuth"], config.elevation, plotter.camera.view_angle)
            plotter.render()

    plotter.add_key_event(key, toggle)
    # A repeating timer drives the spin so the window stays interactive between frames.
    plotter.add_timer_event(max_steps=10**9, duration=int(1000 / config.turntable_fps), callback=tick)


def show(path: str | Path, config: PreviewConfig | None = None) -> None:
    """Open an interactive window on the mesh file: axes, the texture, ``t`` to start/stop a turntable."""
    if not has_display():
        raise InputError(
            "No display is available for an interactive window; use --screenshot out.png or --turntable out.gif."
        )
    config = config or PreviewConfig()
    plotter = build_plotter(path, config, off_screen=False)
    plotter.add_axes()
    plotter.add_text(f"{Path(path).name}   [t] turntable  [q] quit", font_size=9)
    add_turntable_key(plotter, config)
    plotter.show(title=f"img2mesh show: {Path(path).name}")


def _write_atomically(out: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``out`` and rename it over ``out`` once complete."""
    if not out.parent.is_dir():
        raise InputError(f"Folder {out.parent} does not exist; create it or choose another output path.")
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        write(tmp)
        os.replace(tmp, out)
    except PermissionError:
        raise InputError(f"Cannot write {out}: permission denied; choose a writable output path.") from None
    finally:
        tmp.unlink(missing_ok=True)
