"""``img2mesh dataset``: an existing views grid (or folder of six views) in, a nerfstudio / instant-ngp dataset out.

For views made earlier (``views.png`` of a run, a grid from another Zero123++ front end, six renders): no model is
needed, only the pose table the views follow. The input is read and checked completely before anything is
written, and the dataset folder appears only once every file is in it.
"""

from __future__ import annotations

import typing
from pathlib import Path

import click

from img2mesh.commands.options import config_overrides, out_option, override_sources, shared_options
from recon.config import ViewsConfig


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@out_option(
    "Dataset folder to write (transforms.json, images/, masks/); an earlier dataset there is replaced.", required=True
)
@shared_options("poses")
@click.option("--radius", type=float, default=None, help="Camera distance from the object. [config: views.radius]")
@click.option(
    "--mask",
    type=click.Choice(typing.get_args(typing.get_type_hints(ViewsConfig)["mask"])),
    default=None,
    help="How masks are made when the views have no alpha. [config: views.mask]",
)
@click.option(
    "--ns-masks",
    is_flag=True,
    help="Also write nerfstudio mask_path entries (nerfstudio then trains on the object's pixels only).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print errors only.")
def dataset(source: Path, out: Path, radius: float | None, mask: str | None, ns_masks: bool, quiet: bool, **options):
    """Views → transforms.json dataset that nerfstudio and instant-ngp read as-is.

    SOURCE is a Zero123++ grid image (640 wide x 960 tall: 3 rows x 2 columns of 320-px views), a folder of six
    views (00.png ... 05.png), a folder saved by ``img2mesh views`` or another dataset folder.
    """
    from img2mesh.config import load_config
    from img2mesh.errors import InputError
    from img2mesh.outputs import atomic_output_dir
    from recon.dataset import read_views, write_dataset

    overrides, sources = config_overrides(options), override_sources(options)
    for key, flag, value in (("views.radius", "--radius", radius), ("views.mask", "--mask", mask)):
        if value is not None:
            overrides[key], sources[key] = value, f"{flag} {value}"
    config = load_config(options.get("config_path"), overrides, sources)
    if not source.exists():
        raise InputError(f"{source} does not exist; pass a 640x960 views image or a folder of six views.")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "transforms.json").is_file())):
        raise InputError(f"{out} exists and is not a dataset folder; choose a new -o folder so nothing is overwritten.")
    views = read_views(source, config.views)
    with atomic_output_dir(out) as work:
        write_dataset(views, work, nerfstudio_masks=ns_masks)
    if not quiet:
        click.echo(f"Dataset of {len(views)} views ({views.poses} poses) written to {out / 'transforms.json'}.")
