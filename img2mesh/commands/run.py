"""``img2mesh run``: photos in, one finished output folder per photo out.

Everything that can be checked without the model is checked before it loads (inputs exist, the output folder is
writable, the config is valid, the device exists, the weights are there), so a typo costs a second, not a model
load. After that, one photo failing — an unreadable file, views that give no object — is reported in one line and
the others go on; the exit status is 0 only when every photo produced its folder.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import click

from img2mesh.commands.options import (
    MODEL_OPTIONS,
    RECON_OPTIONS,
    config_from_options,
    configure_logging,
    out_option,
    shared_options,
)
from img2mesh.commands.options import verbosity_options as verbosity
from img2mesh.errors import InputError

#: Short column headers of the stage-timings table.
STAGE_HEADERS = {
    "prepare_input": "prep",
    "generate_views": "views",
    "pose_views": "pose",
    "fit": "fit",
    "finish": "finish",
    "export": "export",
    "preview": "preview",
}


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@out_option("Folder that receives one sub-folder per input photo.")
@click.option(
    "--export",
    "export_path",
    type=click.Path(path_type=Path),
    help="Also write the mesh to this path (one input only; format from its suffix: .glb, .obj, .ply).",
)
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose output folder already holds a finished run.")
@shared_options(*MODEL_OPTIONS, *RECON_OPTIONS)
@verbosity
def run(
    inputs: tuple[Path, ...],
    out: Path,
    export_path: Path | None,
    skip_existing: bool,
    quiet: bool,
    verbose: bool,
    **options,
) -> None:
    """Photo(s) → textured mesh: cut-out, Zero123++ views, posed views, reconstruction, export, preview.

    INPUTS are image files (PNG, JPEG, WebP) or folders of them. Each photo gets OUT/<name>/ with input.png,
    views.png, views/, transforms.json, the mesh, preview.png and run.json (written last).
    """
    configure_logging(quiet, verbose)
    config = config_from_options(options)  # before the heavy imports: a bad value costs nothing

    from img2mesh.cutout import check_background_removal, load_image
    from img2mesh.pipeline import Img2Mesh
    from img2mesh.run_record import is_complete
    from recon.paths import check_writable, export_target

    images = collect_inputs(inputs)
    if export_path is not None:
        if len(images) > 1:
            raise InputError(f"--export takes one input but {len(images)} were given; use -o for several.")
        export_target(export_path)  # a known format and a writable folder, before any work
    check_writable(out, "output")

    todo = []
    for image in images:
        if skip_existing and is_complete(out / image.stem):
            _say(quiet, f"{image}: skipped, {out / image.stem} is already finished.")
        else:
            todo.append(image)
    if not todo:
        _say(quiet, "Nothing to do: every input is already finished.")
        return

    if len(todo) == 1:
        load_image(todo[0])  # one photo: an unreadable one is said before the model loads (several go on without it)
    check_background_removal(todo, config.preprocess)
    pipeline = Img2Mesh(config, progress=not quiet).load()
    records, failures = [], []
    from tqdm.auto import tqdm

    def fail(image: Path, message: str) -> None:
        failures.append((image, message))
        if len(todo) > 1:
            click.echo(f"{image}: {message}", err=True)

    for image in tqdm(todo, desc="inputs", unit="photo", disable=quiet or len(todo) < 2):
        try:
            records.append(pipeline.run(image, out / image.stem, export=export_path))
        except InputError as exc:
            fail(image, str(exc))
        except Exception as exc:  # a bug in one input's run must not cost the others their results
            if len(todo) == 1:
                raise  # alone, a bug keeps its traceback
            fail(image, f"unexpected {type(exc).__name__}: {exc}")
            if verbose:
                traceback.print_exc()

    if not quiet and records:
        click.echo(timings_table(records, pipeline.load_seconds))
        click.echo(f"{len(records)} of {len(todo)} finished in {out}/.")
    if failures:
        if len(todo) == 1:
            raise InputError(failures[0][1])
        click.echo(f"{len(failures)} of {len(todo)} inputs failed.", err=True)
        raise SystemExit(1)


def collect_inputs(inputs: tuple[Path, ...]) -> list[Path]:
    """The image files named by ``inputs`` (files as given, folders expanded to their images, sorted)."""
    from recon.posed_views import IMAGE_SUFFIXES

    images: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            if not found:
                raise InputError(
                    f"Folder {path} holds no PNG, JPEG or WebP images; pass image files or another folder."
                )
            images += found
        elif path.exists():
            images.append(path)
        else:
            raise InputError(f"Input {path} does not exist; check the path.")
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems and stems[image.stem] != image:
            raise InputError(
                f"Inputs {stems[image.stem]} and {image} would share the output folder {image.stem!r}; rename one."
            )
        stems[image.stem] = image
    return list(stems.values())


def timings_table(records, load_seconds: float | None = None) -> str:
    """Seconds per stage, one row per input, and the model load once above them."""
    stages = [s for s in STAGE_HEADERS if any(s in r.timings for r in records)]
    names = [Path(r.input).stem for r in records]
    width = max(len("input"), *(len(n) for n in names))
    header = f"{'input':<{width}} " + " ".join(f"{STAGE_HEADERS[s]:>7}" for s in stages) + f" {'total':>7}"
    lines = []
    if load_seconds is not None:
        lines.append(f"model loaded in {load_seconds:.1f} s")
    lines += [header, "-" * len(header)]
    for name, record in zip(names, records, strict=True):
        cells = " ".join(f"{record.timings.get(s, 0.0):7.2f}" for s in stages)
        lines.append(f"{name:<{width}} {cells} {record.total_seconds:7.2f}")
    return "\n".join(lines)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(message)
