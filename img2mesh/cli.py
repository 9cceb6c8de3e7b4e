"""The ``img2mesh`` command line.

Each subcommand lives in its own module under :mod:`img2mesh.commands` and is imported only when it runs, so
``img2mesh --help`` answers without loading torch. Errors meant for the user (:class:`InputError`) are printed as
one sentence with a non-zero exit; anything else is a bug and keeps its traceback.

The one-shot commands that load torch (:data:`FAST_EXIT`) end their process without the interpreter's teardown once
their work is written (:func:`fast_exit`): tearing down the thousands of modules torch and its company bring, and the
CUDA context, cost about a second of every cold call (benchmarks/RESULTS.md, serve_latency run 3) for nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
import threading

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


#: Commands whose process ends through :func:`fast_exit`: one job each, their files complete before they return.
FAST_EXIT = frozenset({"run", "views", "recon"})


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    invoked: str | None = None
    """The subcommand this process runs, once resolved."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        LazyGroup.invoked = name
        return name, command, rest

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
    try:
        cli(prog_name="img2mesh")
    except SystemExit as exit:  # click ends every command this way, 0 on success
        if LazyGroup.invoked in FAST_EXIT and isinstance(exit.code, int | None):
            fast_exit(exit.code or 0)
        raise


def fast_exit(code: int) -> None:
    """End the process now with ``code``, as the interpreter would but without its teardown: the ``atexit``
    handlers run (logging's flush, ``weakref.finalize`` and temporary files' clean-up, those of libraries), the
    standard streams are flushed, then :func:`os._exit` skips freeing every module and object one by one and the
    CUDA runtime's teardown (the kernel releases the process's memory and its GPU context at once, as for any
    process that ends). Returns, leaving the ordinary exit to the caller, while a non-daemon thread still runs
    (the interpreter would wait for it) or a debugger, profiler or tracer is attached (it may write its results
    after this function's caller returns, as ``python -m cProfile`` does)."""
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if others or _observed():
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe: nothing more can reach it anyway
            stream.flush()
    os._exit(code)


def _observed() -> bool:
    """Whether a debugger, profiler, tracer or coverage tool watches this process."""
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: cProfile, coverage and pdb may use it instead
    return monitoring is not None and any(monitoring.get_tool(tool) is not None for tool in range(6))


if __name__ == "__main__":
    main()
