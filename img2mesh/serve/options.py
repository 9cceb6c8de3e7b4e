"""A job's options: form fields named like config keys, checked by the CLI's own config validation.

``POST /api/jobs`` takes ``multiview.steps=28``, ``mesh.faces=5000``, ... beside the photo, exactly the keys a config
file or ``--set`` takes, and each value is read as YAML as ``--set`` reads it. They go on top of the server's config
(``--config`` and the server's options), through :func:`img2mesh.config.load_config`, so an unknown key or a wrong
value gets the same sentence as on the command line. The keys that chose and loaded the model are the server's:
a job may repeat them but not change them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from img2mesh.config import Img2MeshConfig, load_config
from img2mesh.errors import InputError

#: Config keys fixed for the server's lifetime: they chose the weights, device, precision and fast path it loaded.
SERVER_KEYS = (
    "multiview.model",
    "multiview.revision",
    "multiview.scheduler",
    "multiview.offload",
    "multiview.compile",
    "multiview.normals",
    "multiview.normals_model",
    "runtime.device",
    "runtime.dtype",
    "views.poses",
)


def parse_options(fields: dict[str, str]) -> dict[str, Any]:
    """Form fields → config overrides (each value read as YAML, like ``--set KEY=VALUE``)."""
    options = {}
    for name, raw in fields.items():
        if "." not in name:
            raise InputError(f"Unknown option {name!r}; options are config keys such as multiview.steps or mesh.faces.")
        try:
            options[name] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise InputError(f"Option {name}={raw!r} is not valid YAML; quote it or fix it.") from None
    return options


def job_config(
    server: Img2MeshConfig,
    source: str | Path | None,
    overrides: dict[str, Any],
    options: dict[str, Any],
    fields: dict[str, str] | None = None,
) -> Img2MeshConfig:
    """The config of one job: the server's file ``source`` and ``overrides``, then the job's ``options``.

    ``server`` is the config the model was loaded with; the job keeps its :data:`SERVER_KEYS`. ``fields``, the
    options as sent, lets an error quote what the client typed.
    """
    typed = fields or {}
    sources = {
        key: f"the job option {key}={typed[key]}" if key in typed else f"the job option {key}" for key in options
    }
    config = load_config(source, {**overrides, **options}, sources)
    for key in SERVER_KEYS:
        section, _, name = key.partition(".")
        fixed = getattr(getattr(server, section), name)
        if key in options and getattr(getattr(config, section), name) != fixed:
            raise InputError(
                f"Option {key} is fixed by the server ({fixed!r}, loaded once at start); "
                f"restart img2mesh serve with another value to change it."
            )
        setattr(config, section, dataclasses.replace(getattr(config, section), **{name: fixed}))
    return config
