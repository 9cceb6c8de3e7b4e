"""``img2mesh download``: fetch the Zero123++ weights into the Hugging Face cache ahead of time.

Every command that needs weights finds them in the cache afterwards, also offline (``HF_HUB_OFFLINE=1``); without
them it stops before any work and points here. Only configs, tokenizer files and one weights format per component
are fetched; nothing from the repository is executed.
"""

from __future__ import annotations

import click

from img2mesh.zero123pp.weights import DEFAULT_MODEL, NORMAL_CONTROLNET


@click.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Hugging Face hub id of the Zero123++ weights.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit); the default branch if omitted.")
@click.option("--normals", is_flag=True, help=f"Also fetch the normal-map ControlNet ({NORMAL_CONTROLNET}).")
def download(model: str, revision: str | None, normals: bool) -> None:
    """Download Zero123++ weights (5.6 GB for v1.2, CC-BY-NC-4.0) into the Hugging Face cache."""
    from img2mesh.zero123pp.weights import download_model

    folder = download_model(model, revision)
    click.echo(f"{model} is in {folder}")
    if normals:
        click.echo(f"{NORMAL_CONTROLNET} is in {download_model(NORMAL_CONTROLNET)}")
