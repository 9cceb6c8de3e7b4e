"""``img2mesh views``: a photo in, Zero123++'s six posed views and their dataset out, no reconstruction.

This is the first half of ``img2mesh run``, for people who reconstruct with other tools (nerfstudio, instant-ngp)
or want to look at the views before spending time on a mesh. It uses the same pipeline object as ``run``, so the
same seed and config give the same views in both. Cheap checks come first (config, image, then device and
weights before the model loads) and the output folder appears only when every file is in it.
"""

from __future__ import annotations

from pathlib import Path

import click

from img2mesh.commands.options import (
    MODEL_OPTIONS,
    config_from_options,
    configure_logging,
    out_option,
    shared_options,
    verbosity_options,
)


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@out_option("Folder that receives OUT/<image name>/.")
@shared_options(*MODEL_OPTIONS)
@verbosity_options
def views(image: Path, out: Path, quiet: bool, verbose: bool, **options) -> None:
    """Photo → square cut-out → Zero123++'s six views → posed views and a nerfstudio / instant-ngp dataset.

    Writes OUT/<name>/: input.png (the cut-out), views.png (the raw grid, 640 wide x 960 tall: 3 rows x 2 columns
    of 320-px views), views/00.png ... 05.png (RGBA, masked, with posed_views.npz) and transforms.json with images/
    and masks/.
    """
    configure_logging(quiet, verbose)
    config = config_from_options(options)  # before the heavy imports: a bad value costs nothing

    from img2mesh.cutout import check_background_removal, load_image
    from img2mesh.outputs import atomic_output_dir
    from img2mesh.pipeline import Img2Mesh
    from recon.paths import check_writable

    photo = load_image(image)
    folder = out / image.stem
    check_writable(out, "output")
    check_background_removal([photo], config.preprocess)
    with atomic_output_dir(folder) as work:
        # Device and weights are checked inside load() before the model is read; a failure removes the folder.
        pipeline = Img2Mesh(config, progress=not quiet).load()
        cutout = pipeline.prepare_input(photo)
        grid = pipeline.generate_views(cutout)
        normals = pipeline.generate_normals(cutout, grid)
        pipeline.save_views(work, cutout, grid, pipeline.pose_views(grid, normals), normals)
    if not quiet:
        click.echo(f"Views of {image} written to {folder}/ (seed {config.runtime.seed}).")
