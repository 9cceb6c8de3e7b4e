"""``img2mesh recon``: six posed views in (a 640x960 grid, a folder of six views, or a dataset), a textured mesh out.

The second half of ``img2mesh run``, for views made elsewhere or kept from an earlier run. The views are read and
checked before any work starts, and the mesh files appear only once complete (:func:`recon.export.export_mesh`).
"""

from __future__ import annotations

from pathlib import Path

import click

from img2mesh.commands.options import (
    RECON_OPTIONS,
    config_from_options,
    configure_logging,
    shared_options,
    verbosity_options,
)


@click.command()
@click.argument("views", type=click.Path(path_type=Path))
@click.option(
    "--export",
    "export_path",
    type=click.Path(path_type=Path),
    default=Path("mesh.glb"),
    show_default=True,
    help="Mesh file to write (.glb, .obj or .ply; OBJ also writes .mtl and .png beside it).",
)
@shared_options(*RECON_OPTIONS, "poses", "seed", "device")
@verbosity_options
def recon(views: Path, export_path: Path, quiet: bool, verbose: bool, **options) -> None:
    """Posed views → textured mesh (SDF fitted by volume rendering, UV texture baked from the views).

    VIEWS is a Zero123++ grid image (640 wide x 960 tall: 3 rows x 2 columns of 320-px views), a folder of six
    views (00.png ... 05.png), a folder saved by ``img2mesh views`` or a dataset folder with transforms.json.
    """
    configure_logging(quiet, verbose)
    config = config_from_options(options)  # before the heavy imports: a bad value costs nothing

    import time

    from recon.dataset import read_views
    from recon.paths import export_target

    fmt = options.get("format") or (export_path.suffix.lstrip(".").lower() or config.export.format)
    target, fmt = export_target(export_path, fmt)
    posed = read_views(views, config.views)
    from recon.devices import requested_fit_device

    requested_fit_device(config.runtime.device, config.recon.device)  # a missing GPU is said before the fitting

    from recon.fit import fit_fields  # the fitting's imports (torch) only once the inputs are known good

    start = time.perf_counter()
    # The mesh modules (trimesh, scipy, xatlas: about a second) are imported while the device replays the fit.
    fields = fit_fields(
        posed, config.recon, config.runtime.device, not quiet, config.runtime.seed, meanwhile=_import_finishing
    )
    from recon.asset import finish_asset
    from recon.export import export_levels

    timings = dict(fields.timings)
    meshes = finish_asset(
        fields, posed, config.mesh, config.texture, config.export, device=fields.device, timings=timings
    )
    written = export_levels(meshes, target, fmt, config.export.height)
    timings["total"] = time.perf_counter() - start
    if not quiet:
        names = ", ".join(str(p) for p in written)
        faces = "/".join(str(len(mesh.faces)) for mesh in meshes)
        click.echo(f"Mesh of {faces} faces written to {names} in {timings['total']:.1f} s.")
        if verbose:
            click.echo("  " + "  ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
            if fields.registration_rms is not None:
                click.echo(f"  {fields.registration_sentence()}")


def _import_finishing() -> None:
    """Import what follows the fit: the mesh, texture and export modules."""
    import recon.asset
    import recon.export  # noqa: F401
