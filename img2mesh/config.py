"""Typed configuration of every stage, loaded from YAML presets in ``configs/``.

Each stage owns one dataclass with a docstring under every field; :class:`Img2MeshConfig` gathers them into the
sections of a config file. They live in modules that import neither torch nor numpy (:mod:`recon.config` for the
reconstruction stages, this one, :mod:`img2mesh.zero123pp.config`, :mod:`img2mesh.viewer`), because the command
line builds its options from them and ``--help`` must answer at once. The dataclass defaults are the truth and
``configs/default.yaml`` spells them out; a preset (``fast``, ``quality``, ``cpu``, ``lowpoly``) or a user file only
overrides what it names. Unknown keys, wrong types and values out of range (each section's ``validate()``) fail
while the config loads, before any model or fitting, with one sentence naming the key and where it was set.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.resources
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from img2mesh.errors import InputError
from img2mesh.viewer import PreviewConfig
from img2mesh.zero123pp.config import MultiviewConfig
from recon.config import (
    ConfigValueError,
    ExportConfig,
    MeshConfig,
    ReconConfig,
    TextureConfig,
    ViewsConfig,
    check,
    check_range,
)


def presets_dir() -> Path:
    """Folder of the shipped presets: the wheel's package data ``img2mesh/configs`` (pyproject maps the top-level
    ``configs/`` there), or ``configs/`` itself when running from a checkout."""
    packaged = importlib.resources.files("img2mesh") / "configs"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "configs"


@dataclass
class RuntimeConfig:
    """Where and how reproducibly the GPU stages run."""

    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    """Compute device; "auto" takes CUDA, then MPS, then the CPU."""
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    """Weight and activation precision of the diffusion model; "auto" is fp16 on CUDA/MPS and fp32 on the CPU."""
    seed: int = 42
    """Seed of every random draw; the same seed and config reproduce the same views."""

    def validate(self) -> None:
        """Raise :class:`~recon.config.ConfigValueError` for the first value out of range."""
        check_range("seed", self.seed, 0, 2**63 - 1)


@dataclass
class PreprocessConfig:
    """How an input photo becomes the condition image."""

    remove_bg: Literal["auto", "rembg", "none"] = "auto"
    """Background removal: "auto" keeps an existing alpha and runs rembg otherwise; "none" uses the photo as is."""
    object_share: float = 0.85
    """Share of the square's side taken by the object's longer bounding-box side."""
    size: int = 512
    """Side of the square cut-out in pixels."""
    rembg_model: str = "u2net"
    """rembg model: a name rembg knows (u2net, isnet-general-use, birefnet-general, ...) or a U²-Net-like .onnx file."""

    def validate(self) -> None:
        """Raise :class:`~recon.config.ConfigValueError` for the first value out of range."""
        check(0 < self.object_share <= 1, "object_share", self.object_share, "use a share in (0, 1], e.g. 0.85")
        check_range("size", self.size, 64, 4096)


@dataclass
class Img2MeshConfig:
    """The whole job, one section per stage (the sections of a config file)."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Device, precision and seed."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    """Photo → square cut-out."""
    multiview: MultiviewConfig = field(default_factory=MultiviewConfig)
    """Zero123++ sampling."""
    views: ViewsConfig = field(default_factory=ViewsConfig)
    """Grid → posed views (masks, cameras)."""
    recon: ReconConfig = field(default_factory=ReconConfig)
    """Posed views → signed-distance and colour fields."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """Field → clean triangle mesh."""
    texture: TextureConfig = field(default_factory=TextureConfig)
    """Mesh → UV unwrap and baked base-colour texture."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """Mesh files written."""
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    """Off-screen preview image."""

    def validate(self) -> None:
        """Check every section's values (``validate()`` of each that has checks beyond its field types); raise
        :class:`~recon.config.ConfigValueError` with the dotted key of the first bad value."""
        for section in dataclasses.fields(self):
            validate = getattr(getattr(self, section.name), "validate", None)
            if validate is None:
                continue
            try:
                validate()
            except ConfigValueError as exc:
                raise ConfigValueError(f"{section.name}.{exc.key}", exc.value, exc.fix) from None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A preset name (``fast``) or a path to a YAML file, as a path that exists."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    presets = presets_dir()
    preset = presets / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in presets.glob("*.yaml")))
    raise InputError(
        f"Config {str(name_or_path)!r} is neither a file nor a preset; use a YAML path or one of: {names}."
    )


def load_config(
    name_or_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
) -> Img2MeshConfig:
    """Defaults, then the file or preset ``name_or_path``, then ``overrides`` (``{"recon.steps": 500, ...}``),
    checked (:meth:`Img2MeshConfig.validate`).

    ``sources`` says where each override came from (``{"mesh.faces": "--faces 0"}``), so that an error names
    what the user typed; overrides it does not name are reported as such.
    """
    import yaml

    data: dict[str, Any] = {}
    file_source = "the defaults"
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        file_source = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"Config {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax.") from None
        if not isinstance(data, dict):
            raise InputError(
                f"Config {path} must be a mapping of sections (runtime:, recon:, ...), not a {type(data).__name__}."
            )
    override_sources = {key: (sources or {}).get(key, f"the override {key}") for key in overrides or {}}

    def source(key: str) -> str:
        return next((s for k, s in override_sources.items() if k == key or key.startswith(f"{k}.")), file_source)

    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise InputError(f"Config section {section!r} (set by {file_source}) must be a mapping.")
        data[section][key] = value
    config = build_dataclass(Img2MeshConfig, data, source, prefix="")
    try:
        config.validate()
    except ConfigValueError as exc:
        raise InputError(f"Config key {exc.key!r} is {exc.value!r} (set by {source(exc.key)}); {exc.fix}.") from None
    return config


def build_dataclass(cls: type, data: dict[str, Any], source: Callable[[str], str], prefix: str) -> Any:
    """Instantiate ``cls`` from a mapping, checking every key and value against the field types; ``source(key)``
    says where a dotted key's value was set, for the error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise InputError(
            f"Unknown config key {key!r} (set by {source(key)}); valid keys here are: {', '.join(sorted(fields))}."
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}", source)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str, source: Callable[[str], str]) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InputError(f"Config key {key!r} (set by {source(key)}) must be a mapping of its fields.")
        return build_dataclass(hint, value, source, prefix=f"{key}.")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise InputError(
                f"Config key {key!r} is {value!r} (set by {source(key)}); choose one of {', '.join(map(str, choices))}."
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        last_error: InputError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except InputError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise InputError(f"Config key {key!r} (set by {source(key)}) must be a list.")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = args[0] if args else Any
        items = [_coerce(item, v, key, source) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint is Path and isinstance(value, str):
        return Path(value)
    raise InputError(
        f"Config key {key!r} is {value!r} (set by {source(key)}); it must be of type {getattr(hint, '__name__', hint)}."
    )


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON-ready data (for ``run.json`` and ``img2mesh config``)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def field_docstrings(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (they are not kept at run time, so read the source)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def first_sentence(doc: str) -> str:
    """The first sentence of a field docstring, on one line: the help ``configs/default.yaml`` keeps per key."""
    text = " ".join(doc.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def default_yaml() -> str:
    """``configs/default.yaml``: every section and key at its default, each under the first sentence of its field
    docstring as a comment."""
    import yaml

    config = Img2MeshConfig()
    values = config_to_dict(config)
    section_docs = field_docstrings(Img2MeshConfig)
    lines = [
        "# img2mesh defaults: every key of every section, generated from the config dataclasses by",
        "# `python -m img2mesh.config > configs/default.yaml` (a test keeps them equal). A preset or your own",
        "# file only needs the keys it changes.",
    ]
    for section in values:
        docs = field_docstrings(type(getattr(config, section)))
        lines += ["", f"# {section_docs[section]}", f"{section}:"]
        for key, value in values[section].items():
            lines.append(f"  # {first_sentence(docs.get(key, ''))}")
            dumped = yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False, width=1000)
            lines += [f"  {line}" for line in dumped.splitlines()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(default_yaml(), end="")
