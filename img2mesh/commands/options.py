"""Command-line options shared by ``run``, ``views``, ``recon`` and ``batch``, and their mapping onto the config.

Every option that changes the job is a config key too (``--steps`` is ``multiview.steps``), so a config file can
say everything the command line can, and the command line only overrides what it names: an option left out keeps
the value of the file (``--config``) or of the defaults. Choices come from the ``Literal`` types of the config
dataclasses, so the CLI and the config file cannot disagree about what is allowed.

Usage in a command module::

    @click.command()
    @shared_options(*MODEL_OPTIONS, *RECON_OPTIONS)
    def views(image, **options):
        config = config_from_options(options)
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click

from img2mesh.errors import InputError


@dataclass(frozen=True)
class ConfigOption:
    """A command-line option that sets one config key."""

    flag: str
    """The long option, e.g. ``--steps``."""
    key: str
    """The dotted config key it sets, e.g. ``multiview.steps``."""
    help: str
    """One line for ``--help``."""

    @property
    def param(self) -> str:
        """The click parameter name (``--texture-size`` → ``texture_size``)."""
        return self.flag.lstrip("-").replace("-", "_")


#: Every shared option, by name. The click type of each comes from the config field it sets.
CONFIG_OPTIONS: dict[str, ConfigOption] = {
    o.param: o
    for o in (
        ConfigOption("--model", "multiview.model", "Zero123++ weights: a Hugging Face hub id or a local folder."),
        ConfigOption("--revision", "multiview.revision", "Hub revision (branch, tag or commit) of --model."),
        ConfigOption("--steps", "multiview.steps", "Denoising steps of the multi-view diffusion."),
        ConfigOption("--guidance", "multiview.guidance", "Classifier-free guidance scale (1.0 turns it off)."),
        ConfigOption("--seed", "runtime.seed", "Seed of every random draw; the same seed reproduces the views."),
        ConfigOption("--device", "runtime.device", "Compute device."),
        ConfigOption("--dtype", "runtime.dtype", "Precision of the diffusion model."),
        ConfigOption("--faces", "mesh.faces", "Target face count of the mesh."),
        ConfigOption("--texture-size", "texture.size", "Side of the square base-colour texture in pixels."),
        ConfigOption("--format", "export.format", "File format of the exported mesh."),
        ConfigOption("--height", "export.height", "Height of the exported object in metres (it stands on y = 0)."),
        ConfigOption("--lods", "export.lods", "Levels of detail: face counts, finest first (e.g. 20000,5000,1000)."),
        ConfigOption("--normal-map", "export.normal_map", "Bake the fitted surface's fine detail into a normal map."),
        ConfigOption("--colour", "export.colour", "Base colour: the views' lit colours, or albedo (shading removed)."),
        ConfigOption("--remove-bg", "preprocess.remove_bg", "Background removal: auto keeps an existing alpha."),
        ConfigOption("--poses", "views.poses", "Zero123++ pose table of the views (match the model version)."),
        ConfigOption(
            "--compile", "multiview.compile", "Fast path of the denoising step (CUDA graphs, compiled UNet blocks)."
        ),
        ConfigOption("--normals", "multiview.normals", "Also run the normal ControlNet (its mattes become the masks)."),
        ConfigOption("--lora", "multiview.lora", "LoRA from `img2mesh train` (its output folder), merged at load."),
    )
}

#: Options of the commands that turn photos into views with the diffusion model (``views``, ``run``, ``batch``).
MODEL_OPTIONS = (
    "remove_bg",
    "model",
    "revision",
    "steps",
    "guidance",
    "seed",
    "device",
    "dtype",
    "compile",
    "normals",
    "poses",
    "lora",
)
#: Options of the commands that reconstruct and export a mesh (``recon``, ``run``, ``batch``).
RECON_OPTIONS = ("faces", "texture_size", "format", "height", "lods", "normal_map", "colour")


def _field_type(key: str) -> Any:
    """The type hint of a dotted config key, read from the config dataclasses."""
    from img2mesh.config import Img2MeshConfig

    section, _, name = key.partition(".")
    section_cls = typing.get_type_hints(Img2MeshConfig)[section]
    return typing.get_type_hints(section_cls)[name]


def _click_type(key: str) -> Any:
    hint = _field_type(key)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is not Literal and len(args) == 1:  # Optional[X]
        hint = args[0]
    if typing.get_origin(hint) is Literal:
        return click.Choice([str(c) for c in typing.get_args(hint)])
    return {int: click.INT, float: click.FLOAT}.get(hint, click.STRING)


def config_option(function: Callable) -> Callable:
    """``--config NAME|PATH`` and ``--set KEY=VALUE``: the config file, and overrides of any key in it."""
    function = click.option(
        "--set",
        "set_values",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override any config key, e.g. --set recon.rays=4096 (repeatable; VALUE is YAML).",
    )(function)
    return click.option(
        "--config",
        "config_path",
        metavar="NAME|PATH",
        help="Config preset (default, fast, quality, cpu, ...) or YAML file; options given here override it.",
    )(function)


def shared_options(*names: str) -> Callable[[Callable], Callable]:
    """Decorator adding ``--config``/``--set`` and the named shared options (see :data:`CONFIG_OPTIONS`)."""

    def decorate(function: Callable) -> Callable:
        for name in reversed(names):
            option = CONFIG_OPTIONS[name]
            help_text = f"{option.help} [config: {option.key}]"
            if _field_type(option.key) is bool:  # --normals/--no-normals; neither given leaves the config's value
                flags = f"{option.flag}/--no-{option.flag.lstrip('-')}"
                function = click.option(flags, option.param, default=None, help=help_text)(function)
                continue
            function = click.option(
                option.flag, option.param, type=_click_type(option.key), default=None, help=help_text
            )(function)
        return config_option(function)

    return decorate


def out_option(help_text: str, required: bool = False) -> Callable[[Callable], Callable]:
    """``-o/--out FOLDER``: where a command writes (``out/`` unless ``required``)."""
    default = None if required else Path("out")
    return click.option(
        "-o",
        "--out",
        type=click.Path(path_type=Path),
        required=required,
        default=default,
        show_default=not required,
        help=help_text,
    )


def verbosity_options(function: Callable) -> Callable:
    """``--quiet`` (errors only) and ``--verbose`` (stage details)."""
    function = click.option("--verbose", "-v", is_flag=True, help="Print details of every stage.")(function)
    return click.option("--quiet", "-q", is_flag=True, help="Print errors only: no progress bars or tables.")(function)


def configure_logging(quiet: bool, verbose: bool) -> None:
    """Route the ``img2mesh`` loggers to stderr at the level ``--quiet``/``--verbose`` ask for."""
    logger = logging.getLogger("img2mesh")
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def parse_set_values(values: typing.Iterable[str], sections: bool = True) -> dict[str, Any]:
    """``["mesh.faces=5000", ...]`` as config overrides, each value parsed as YAML (numbers, booleans, lists); keys
    are SECTION.KEY, or plain keys with ``sections=False`` (``img2mesh train``'s flat config)."""
    import yaml

    form, example = ("SECTION.KEY=VALUE", "mesh.faces=5000") if sections else ("KEY=VALUE", "validate_every=100")
    overrides = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or (sections and "." not in key):
            raise InputError(f"--set {item!r} must look like {form}, e.g. --set {example}.")
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise InputError(f"--set {item!r} has a value that is not valid YAML; quote it or fix it.") from None
    return overrides


def config_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The config overrides named by parsed command-line options (options left out are not overrides)."""
    overrides = parse_set_values(options.get("set_values") or ())
    for name, option in CONFIG_OPTIONS.items():
        value = options.get(name)
        if value is not None:
            overrides[option.key] = _typed(option.key, value)
    return overrides


def override_sources(options: dict[str, Any]) -> dict[str, str]:
    """What the user typed for each override (``{"mesh.faces": "--faces 0"}``), for error messages."""
    sources = {item.partition("=")[0].strip(): f"--set {item}" for item in options.get("set_values") or ()}
    for name, option in CONFIG_OPTIONS.items():
        value = options.get(name)
        if isinstance(value, bool):
            sources[option.key] = option.flag if value else f"--no-{option.flag.lstrip('-')}"
        elif value is not None:
            sources[option.key] = f"{option.flag} {value}"
    return sources


def _typed(key: str, value: Any) -> Any:
    """Click hands choices over as strings; the config wants the Literal's own value type."""
    hint = _field_type(key)
    if typing.get_origin(hint) is Literal:
        return next((c for c in typing.get_args(hint) if str(c) == value), value)
    if typing.get_origin(hint) is tuple and isinstance(value, str):  # --lods 20000,5000,1000
        items = [item.strip() for item in value.split(",")]
        return [int(item) if item.lstrip("-").isdigit() else item for item in items]  # the config names a bad one
    return value


def config_from_options(options: dict[str, Any]):
    """The :class:`~img2mesh.config.Img2MeshConfig` of a command: defaults, then ``--config``, then options, checked.

    Without ``--config``, a job whose device comes out as the CPU takes the ``cpu`` preset, and says so: the
    default preset is sized for a GPU and takes minutes where the CPU preset takes seconds.
    """
    from img2mesh.config import load_config

    overrides, sources = config_overrides(options), override_sources(options)
    preset = options.get("config_path")
    config = load_config(preset, overrides, sources)  # a bad value fails here, before torch is imported
    if preset is None and _runs_on_cpu(config.runtime.device):
        logging.getLogger("img2mesh").warning(
            "The job runs on the CPU: using the cpu preset (smaller grids); "
            "pass --config default to keep the GPU settings."
        )
        config = load_config("cpu", overrides, sources)
    return config


def _runs_on_cpu(device: str) -> bool:
    if device == "cpu":
        return True
    if device != "auto":
        return False
    from recon.devices import resolve_device

    return resolve_device("auto").type == "cpu"


__all__ = [
    "CONFIG_OPTIONS",
    "MODEL_OPTIONS",
    "RECON_OPTIONS",
    "ConfigOption",
    "config_from_options",
    "config_option",
    "config_overrides",
    "configure_logging",
    "out_option",
    "override_sources",
    "parse_set_values",
    "shared_options",
    "verbosity_options",
]
