"""The ``img2mesh`` command line.

Each subcommand lives in its own module under :mod:`img2mesh.commands` and is imported only when it runs, so
``img2mesh --help`` answers without loading torch. Errors meant for the user (:class:`InputError`) are printed as
one sentence with a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib

import click

from img2mesh import __version__
from img2mesh.errors import InputError

#: Subcommand name → "module:attribute" of its click command, in the order ``--help`` lists them.
COMMANDS = {
    "run": "img2mesh.commands.run:run",
    "views": "img2mesh.commands.views:views",
    "dataset": "img2mesh.commands.dataset:dataset",
    "recon": "img2mesh.commands.recon:recon",
    "show": "img2mesh.commands.show:show",
    "batch": "img2mesh.commands.batch:batch",
    "serve": "img2mesh.commands.serve:serve",
    "download": "img2mesh.commands.download:download",
    "train-data": "img2mesh.commands.train:train_data",
    "train": "img2mesh.commands.train:train",
}


class UserError(click.ClickException):
    """An :class:`InputError` on its way out: click prints ``Error: <sentence>`` and exits with status 2."""

    exit_code = 2


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InputError as exc:
            raise UserError(str(exc)) from None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="img2mesh")
def cli() -> None:
    """One photo of an object in, a textured 3D mesh out (Zero123++ views + fast reconstruction)."""


def main() -> None:
    """Console entry point (also ``python -m img2mesh`` and ``python -m img2mesh.cli``)."""
    cli(prog_name="img2mesh")


if __name__ == "__main__":
    main()
