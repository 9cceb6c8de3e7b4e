"""``img2mesh batch``: thousands of photos, on one GPU or a Ray cluster, resumable and splittable.

The job's state lives in its output folder alone — complete item folders and ``manifest.jsonl`` — so the same
command line is the way to start, resume after a crash, extend with new photos, or retry failures; and N copies with
``--shard i/N`` can share one output folder on a shared file system.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from img2mesh.commands.options import MODEL_OPTIONS, RECON_OPTIONS, config_from_options, out_option, shared_options
from img2mesh.commands.options import verbosity_options as verbosity
from img2mesh.errors import InputError

#: What ``--ray`` accepts as an address, so a path swallowed by the optional value is caught.
_RAY_ADDRESS = re.compile(r"local|auto|(ray|https?)://\S+|[\w.-]+:\d+")


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@out_option("Folder that receives one sub-folder per item (named <stem>-<hash>) and manifest.jsonl.", required=True)
@click.option(
    "--skip-existing/--no-skip-existing",
    default=True,
    show_default=True,
    help="Skip items whose folder is finished, and items that failed before (see --retry-failed).",
)
@click.option("--retry-failed", is_flag=True, help="Run again the items the manifest lists as failed.")
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Run on Ray: alone, a local Ray on this machine's GPUs; 'auto' or HOST:PORT, a running cluster.",
)
@click.option("--shard", metavar="i/N", help="Do only this copy's share of the items (0-based i of N copies).")
@click.option(
    "--cpu-workers",
    type=click.IntRange(min=1),
    help=(
        "Processes writing items (mesh, texture, export, preview) on the CPU beside the GPU "
        "(default runner; default: cores/4, 1 to 4)."
    ),
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Times an item is retried after its worker process died, before it is reported failed.",
)
@shared_options(*MODEL_OPTIONS, *RECON_OPTIONS)
@verbosity
def batch(
    inputs: tuple[str, ...],
    out: Path,
    skip_existing: bool,
    retry_failed: bool,
    ray_address: str | None,
    shard: str | None,
    cpu_workers: int | None,
    max_retries: int,
    quiet: bool,
    verbose: bool,
    **options,
) -> None:
    """Many photos → one finished folder each (the layout of `img2mesh run`), plus OUT/manifest.jsonl.

    INPUTS are folders of photos, globs (quoted), photos, or text files listing one path or URI (file://, http://,
    https://) per line. A rerun skips what is finished; exit status 1 if any item failed.
    """
    from img2mesh.commands.options import configure_logging

    configure_logging(quiet, verbose)
    if ray_address is not None and not _RAY_ADDRESS.fullmatch(ray_address):
        raise InputError(
            f"--ray {ray_address!r} is not an address (auto, HOST:PORT, ray://HOST:PORT); "
            "put INPUTS before --ray or write --ray=ADDRESS."
        )
    config = config_from_options(options)  # before the heavy imports: a bad value costs nothing

    from img2mesh.batch.inputs import collect_items
    from img2mesh.batch.job import print_summary, run_job
    from img2mesh.batch.phases import CrashPlan
    from img2mesh.batch.shard import parse_shard
    from img2mesh.cutout import check_background_removal
    from recon.paths import check_writable

    part = parse_shard(shard) if shard else None
    items = collect_items(list(inputs))
    check_writable(out, "output")
    check_background_removal([item.source for item in items if not item.is_remote], config.preprocess)
    crash = CrashPlan.from_env()
    if ray_address is not None:
        from img2mesh.batch.ray_runner import RayRunner

        runner = RayRunner(config, out, address=ray_address, max_retries=max_retries, crash=crash)
    else:
        from img2mesh.batch.local_runner import LocalRunner

        runner = LocalRunner(config, out, cpu_workers=cpu_workers, max_retries=max_retries, crash=crash)
    result = run_job(
        items, out, runner, shard=part, skip_existing=skip_existing, retry_failed=retry_failed, progress=not quiet
    )
    if not quiet:
        print_summary(result, out)
    if not result.ok:
        raise SystemExit(1)
