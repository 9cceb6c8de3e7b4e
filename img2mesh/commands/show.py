"""``img2mesh show``: look at a mesh — in a window, or off-screen as a screenshot or a turntable animation."""

from __future__ import annotations

from pathlib import Path

import click

from img2mesh.commands.options import config_option, override_sources, parse_set_values


@click.command()
@click.argument("mesh", type=click.Path(path_type=Path))
@click.option("--screenshot", type=click.Path(path_type=Path), help="Render off-screen into this PNG (no window).")
@click.option(
    "--turntable",
    type=click.Path(path_type=Path),
    help="Render one full turn off-screen into this .gif or .mp4 (no window).",
)
@click.option("--size", type=int, help="Side of the square image in pixels. [config: preview.size]")
@click.option("--azimuth", type=float, help="Camera azimuth in degrees (0: photo side). [config: preview.azimuth]")
@click.option("--elevation", type=float, help="Camera elevation in degrees. [config: preview.elevation]")
@click.option("--background", help="Background colour name or hex code. [config: preview.background]")
@config_option
def show(
    mesh: Path,
    screenshot: Path | None,
    turntable: Path | None,
    size: int | None,
    azimuth: float | None,
    elevation: float | None,
    background: str | None,
    config_path: str | None,
    set_values: tuple[str, ...],
) -> None:
    """Show MESH (.glb, .obj, .ply) with its texture: axes, mouse to orbit, [t] starts/stops a turntable.

    With --screenshot or --turntable nothing opens: the images are rendered off-screen, which also works on a
    machine with no display.
    """
    from img2mesh import viewer
    from img2mesh.config import load_config

    overrides = parse_set_values(set_values)
    sources = override_sources({"set_values": set_values})
    given = {"size": size, "azimuth": azimuth, "elevation": elevation, "background": background}
    for key, value in given.items():
        if value is not None:
            overrides[f"preview.{key}"], sources[f"preview.{key}"] = value, f"--{key} {value}"
    config = load_config(config_path, overrides, sources).preview
    viewer.check_mesh_path(mesh)
    if screenshot is None and turntable is None:
        viewer.show(mesh, config)
        return
    if screenshot is not None:
        click.echo(viewer.save_screenshot(mesh, screenshot, config))
    if turntable is not None:
        click.echo(viewer.save_turntable(mesh, turntable, config))
