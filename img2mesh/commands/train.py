"""``img2mesh train-data`` (meshes → training pairs) and ``img2mesh train`` (fine-tune Zero123++ on them).

Both read their settings from one dataclass each (:class:`~img2mesh.train.config.TrainDataConfig`,
:class:`~img2mesh.train.config.TrainConfig`): ``--config FILE`` loads a YAML file of its keys, ``--set KEY=VALUE``
overrides any key, and the named options override those. Everything is checked (settings, data folder, output
folder, weights) before a model loads. Several GPUs: ``accelerate launch "$(which img2mesh)" train ...``.
"""

from __future__ import annotations

from pathlib import Path

import click

from img2mesh.commands.options import configure_logging, out_option, parse_set_values

_SET_HELP = "Override any config key, e.g. --set validate_every=100 (repeatable; VALUE is YAML)."


@click.command("train-data")
@click.argument("meshes", type=click.Path(path_type=Path))
@out_option("Folder of the training pairs and index.json (an interrupted run there resumes).", required=True)
@click.option("--poses", type=click.Choice(["v1.2", "v1.1"]), default=None, help="Pose table of the target grids.")
@click.option("--conditions", type=int, default=None, help="Condition images (and target grids) per mesh.")
@click.option("--view-size", type=int, default=None, help="Side of each target view in pixels (320 for training).")
@click.option("--lighting", type=click.Choice(["lit", "unlit"]), default=None, help="Shaded by one light, or albedo.")
@click.option("--up", type=click.Choice(["y", "z"]), default=None, help="Up axis of OBJ and PLY files.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default=None, help="Device of the renderer.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML file of TrainDataConfig keys.")
@click.option("--set", "set_values", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--quiet", "-q", is_flag=True, help="Print errors only.")
def train_data(meshes: Path, out: Path, config_path: Path | None, set_values: tuple[str, ...], quiet: bool, **options):
    """Meshes (GLB, glTF, OBJ, PLY under MESHES/) → condition images and 3x2 target grids to fine-tune on.

    Per mesh and condition: an RGBA cut-out from a random viewpoint (azimuth 0-360°, elevation -20° to 45°) and the
    six views at the fixed Zero123++ poses relative to it, laid out as the model's 640x960 output over gray.
    """
    from img2mesh.train.config import load_data_config
    from img2mesh.train.data import render_training_data

    configure_logging(quiet, False)
    overrides = parse_set_values(set_values, sections=False)
    overrides.update({key: value for key, value in options.items() if value is not None})
    config = load_data_config(config_path, overrides)
    report = render_training_data(meshes, out, config, progress=not quiet)
    if not quiet:
        pairs = config.conditions * (len(report.rendered) + len(report.kept))
        click.echo(
            f"{len(report.rendered)} mesh(es) rendered, {len(report.kept)} already there, {len(report.skipped)} "
            f"skipped: {pairs} training pairs in {out}/."
        )
    for source, reason in report.skipped.items():
        click.echo(f"skipped {source}: {reason}", err=True)


@click.command("train")
@click.argument("data", type=click.Path(path_type=Path))
@out_option("Run folder: checkpoints, logs, validation grids, the adapter (or model).", required=True)
@click.option("--model", default=None, help="Base weights: hub id or local folder (default Zero123++ v1.2).")
@click.option("--revision", default=None, help="Hub revision of --model.")
@click.option("--lora-rank", type=int, default=None, help="Rank of the LoRA adapter (the default mode; 64).")
@click.option("--full", is_flag=True, default=None, help="Fine-tune every UNet weight instead of a LoRA adapter.")
@click.option("--steps", type=int, default=None, help="Optimiser steps.")
@click.option("--batch-size", type=int, default=None, help="Training pairs per step (per GPU).")
@click.option("--lr", "learning_rate", type=float, default=None, help="Learning rate (1e-4 LoRA, 1e-5 full).")
@click.option("--resume", is_flag=True, help="Continue the run in -o from its last checkpoint (and its train.yaml).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML file of TrainConfig keys.")
@click.option("--set", "set_values", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--quiet", "-q", is_flag=True, help="Print errors only: no progress bar.")
def train(
    data: Path,
    out: Path,
    full: bool | None,
    resume: bool,
    config_path: Path | None,
    set_values: tuple[str, ...],
    quiet: bool,
    **options,
):
    """Fine-tune Zero123++ on a train-data folder: a LoRA adapter (default) or the full UNet.

    Use the result with `img2mesh run|views|batch --lora OUT/` (a LoRA) or `--model OUT/model` (--full). The
    Zero123++ weights are CC-BY-NC-4.0: a fine-tune is a derivative and carries that licence (OUT/NOTICE.txt).
    """
    from img2mesh.errors import InputError
    from img2mesh.train.config import load_train_config
    from img2mesh.train.trainer import train as run_training

    configure_logging(quiet, False)
    if resume and config_path is None and (out / "train.yaml").is_file():
        config_path = out / "train.yaml"
    overrides = parse_set_values(set_values, sections=False)
    overrides.update({key: value for key, value in options.items() if value is not None})
    if full:
        if options.get("lora_rank") is not None:
            raise InputError("--full trains every UNet weight and --lora-rank sizes an adapter; pass one of them.")
        overrides["mode"] = "full"
    config = load_train_config(config_path, overrides)
    if not quiet:
        click.echo(
            f"Fine-tuning {config.model} ({config.mode}): the Zero123++ weights are CC-BY-NC-4.0, and this "
            "fine-tune is a derivative for non-commercial use only.",
            err=True,
        )
    trainer = run_training(data, out, config, resume=resume, progress=not quiet)
    if not quiet and trainer.accelerator.is_main_process:
        use = f"--lora {out}" if config.mode == "lora" else f"--model {out / 'model'}"
        click.echo(f"Trained {config.steps} steps into {out}/; use it with `img2mesh run PHOTO {use}`.")
