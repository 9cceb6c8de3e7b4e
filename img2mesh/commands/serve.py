"""``img2mesh serve``: one process, the model loaded once, photos in over HTTP, meshes out, a page to use it.

Everything that can be checked before the model loads is (the config, the weights are there, the device exists,
the folder is writable, the port is free), so a typo costs a second. Binding anything but a loopback address is
allowed but warned about: the API runs jobs on this machine's GPU for whoever reaches it (``--token`` guards it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from pathlib import Path

import click

from img2mesh.commands.options import (
    MODEL_OPTIONS,
    RECON_OPTIONS,
    config_overrides,
    configure_logging,
    shared_options,
    verbosity_options,
)
from img2mesh.errors import InputError

#: Hint printed when the serve extra is missing.
INSTALL_HINT = "img2mesh serve needs FastAPI and uvicorn; install them with: pip install 'img2mesh[serve]'."


def host_warning(host: str) -> str | None:
    """The warning for a bind address other than loopback, None for loopback."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (
        f"Warning: serving on {host}, reachable from other machines: anyone who reaches this port can run jobs on "
        "this GPU and read every result. Use --token, a firewall, or --host 127.0.0.1."
    )


@click.command()
@click.argument("folder", type=click.Path(path_type=Path), default=Path("serve-jobs"), required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--token", envvar="IMG2MESH_TOKEN", help="Require this bearer token on the API and the page.")
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0.001),
    default=20.0,
    show_default=True,
    help="Largest photo upload accepted (413 above it).",
)
@click.option(
    "--cpu-workers",
    type=click.IntRange(min=1),
    help="Processes writing jobs (mesh, texture, export, preview) on the CPU beside the GPU.",
)
@click.option("--no-warm-up", is_flag=True, help="Skip the warm-up job at start (the first photo pays it).")
@shared_options(*MODEL_OPTIONS, *RECON_OPTIONS)
@verbosity_options
def serve(
    folder: Path,
    host: str,
    port: int,
    token: str | None,
    max_upload_mb: float,
    cpu_workers: int | None,
    no_warm_up: bool,
    quiet: bool,
    verbose: bool,
    **options,
) -> None:
    """Serve the web page and HTTP API on HOST:PORT; jobs, their folders and jobs.sqlite live in FOLDER.

    Open http://HOST:PORT/ to drop photos; the API is described at /docs. Ctrl-C finishes the jobs in progress
    and keeps the queued ones for the next start; a second Ctrl-C stops at once (those jobs run again then).
    """
    try:
        import uvicorn

        from img2mesh.serve.app import ServeSettings, create_app
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    from img2mesh.config import load_config
    from img2mesh.zero123pp.weights import resolve_model
    from recon.devices import resolve_device
    from recon.paths import check_writable

    configure_logging(quiet, verbose)
    if token is not None and not token.strip():
        raise InputError("--token is empty; pass a secret string or leave the option out.")
    overrides = config_overrides(options)
    config = load_config(options.get("config_path"), overrides)
    resolve_device(config.runtime.device)
    resolve_model(config.multiview.model, config.multiview.revision)
    check_writable(folder, "jobs")
    _check_port(host, port)
    warning = host_warning(host)
    if warning:
        click.echo(warning, err=True)

    settings = ServeSettings(
        root=folder,
        config_source=options.get("config_path"),
        overrides=overrides,
        token=token,
        max_upload_mb=max_upload_mb,
        cpu_workers=cpu_workers,
        warm_up=not no_warm_up,
    )
    server: uvicorn.Server | None = None
    app = create_app(settings, should_abort=lambda: server is not None and server.force_exit)
    level = "error" if quiet else "info" if verbose else "warning"
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=level, lifespan="on"))
    if not quiet:
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"img2mesh serve: http://{shown}:{port}/ (API docs at /docs), jobs in {folder}/", err=True)
        if token:
            click.echo(f"Open http://{shown}:{port}/?token=… once in the browser to use the page.", err=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn hands Ctrl-C on after its graceful shutdown
        server.run()
    if server.force_exit:
        logging.getLogger("img2mesh").warning("Stopped at once; unfinished jobs run again at the next start.")
        os._exit(130)  # the job thread may still hold the GPU; what it did not finish stays queued


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before the model loads (uvicorn would find out only after)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(
                f"Cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host."
            ) from None
