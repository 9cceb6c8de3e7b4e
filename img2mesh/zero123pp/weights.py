"""Where the Zero123++ weights come from: a local folder or the Hugging Face cache, checked before any work.

The public repositories (``sudo-ai/zero123plus-v1.2``, ``-v1.1`` and the normal ControlNet
``sudo-ai/controlnet-zp12-normal-gen-v1``) are plain folders of configs and weight files; nothing in them is
executed. :func:`resolve_model` turns a hub id or a folder into a folder whose layout is complete, so a missing
file is reported in one sentence at start-up rather than as a traceback half-way through a job. Offline
(``HF_HUB_OFFLINE=1`` or no network) nothing is fetched; :func:`download_model` is the explicit way to fill the
cache (``img2mesh download``).

The cache location and the offline switch are read from the environment at call time (not from
``huggingface_hub.constants``, which freezes them at import), so a changed ``HF_HOME`` is honoured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from img2mesh.errors import InputError

#: Default Zero123++ weights (CC-BY-NC-4.0).
DEFAULT_MODEL = "sudo-ai/zero123plus-v1.2"
#: The v1.2 ControlNet that turns generated views into normal maps (CC-BY-NC-4.0).
NORMAL_CONTROLNET = "sudo-ai/controlnet-zp12-normal-gen-v1"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Layout:
    """Files a model folder must hold: each entry is a tuple of alternatives, any one of which will do."""

    kind: str
    """What the folder is, for messages ("Zero123++ model", "normal ControlNet")."""
    required: tuple[tuple[str, ...], ...]
    """Relative paths; an entry is satisfied when one of its alternatives exists (or its sharded index)."""

    def missing(self, folder: Path) -> list[str]:
        """The entries of this layout that ``folder`` lacks, as ``a|b`` strings."""
        lost = []
        for alternatives in self.required:
            if not any(_present(folder / name) for name in alternatives):
                lost.append("|".join(alternatives))
        return lost

    def files_to_fetch(self, repo_files: list[str]) -> list[str]:
        """The files of a hub repository this layout needs: configs, tokenizer files, one weights format each."""
        wanted = [f for f in repo_files if f.endswith((".json", ".txt"))]
        for alternatives in self.required:
            for name in alternatives:
                if name in repo_files:
                    wanted.append(name)
                    break
                if name + ".index.json" in repo_files:  # sharded: every shard of that format in the folder
                    folder, _, filename = name.rpartition("/")
                    stem, _, ext = filename.partition(".")
                    prefix = f"{folder}/{stem}-" if folder else f"{stem}-"
                    wanted += [f for f in repo_files if f.startswith(prefix) and f.endswith("." + ext)]
                    break
        return sorted(set(wanted))


def _present(path: Path) -> bool:
    return path.is_file() or path.with_name(path.name + ".index.json").is_file()


def _weights(folder: str, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{folder}/{n}" for n in names)


ZERO123PP_LAYOUT = Layout(
    "Zero123++ model",
    (
        ("model_index.json",),
        ("vae/config.json",),
        _weights("vae", _DIFFUSERS_WEIGHTS),
        ("unet/config.json",),
        _weights("unet", _DIFFUSERS_WEIGHTS),
        ("text_encoder/config.json",),
        _weights("text_encoder", _TRANSFORMERS_WEIGHTS),
        ("tokenizer/vocab.json",),
        ("tokenizer/merges.txt",),
        ("scheduler/scheduler_config.json",),
        ("vision_encoder/config.json",),
        _weights("vision_encoder", _TRANSFORMERS_WEIGHTS),
        ("feature_extractor_clip/preprocessor_config.json",),
        ("feature_extractor_vae/preprocessor_config.json",),
    ),
)

CONTROLNET_LAYOUT = Layout("normal ControlNet", (("config.json",), _DIFFUSERS_WEIGHTS))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now (``HF_HUB_CACHE``, ``HF_HOME``, XDG)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("HF_HOME") or xdg / "huggingface").expanduser() / "hub"


def hub_offline() -> bool:
    """Whether the user switched the hub off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to a true value)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _layout_for(model: str) -> Layout:
    return CONTROLNET_LAYOUT if "controlnet" in model.lower() else ZERO123PP_LAYOUT


def _how_to_get(model: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    flag = " --normals" if model == NORMAL_CONTROLNET else f" --model {model}{rev}"
    return f"run `img2mesh download{flag}` with network access, or pass --model PATH to a local copy"


def resolve_model(model: str | Path, revision: str | None = None, layout: Layout | None = None) -> Path:
    """The folder holding ``model``: a local folder as is, a hub id from the cache (fetched first when online).

    Raises :class:`InputError` naming what is missing and how to get it when the folder is incomplete, or the
    weights are neither cached nor downloadable (offline, no network); callers run this before any other work.
    """
    layout = layout or _layout_for(str(model))
    path = Path(model).expanduser()
    if path.exists() or not _HUB_ID.match(str(model)):
        if not path.is_dir():
            raise InputError(f"Model folder {str(model)!r} does not exist; pass a hub id or a folder with the model.")
        _check_layout(path, layout, f"folder {path}")
        return path
    cached = _cached_snapshot(str(model), revision)
    if cached is not None and not layout.missing(cached):
        return cached
    if hub_offline():
        state = "is not in the Hugging Face cache" if cached is None else "is only partly in the Hugging Face cache"
        raise InputError(
            f"The {layout.kind} {model} {state} ({hub_cache_dir()}) and HF_HUB_OFFLINE is set; "
            f"{_how_to_get(str(model), revision)}."
        )
    return download_model(str(model), revision, layout=layout, missing=cached is None)


def download_model(
    model: str, revision: str | None = None, layout: Layout | None = None, missing: bool = False
) -> Path:
    """Fetch a hub model's configs and weights into the Hugging Face cache and return its snapshot folder.

    ``missing`` says the caller needed the weights and found none cached; a failure then says how to get them.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    layout = layout or _layout_for(model)
    if not _HUB_ID.match(model):
        raise InputError(f"{model!r} is not a hub id (owner/name); only hub models can be downloaded.")
    if hub_offline():
        raise InputError(
            f"Cannot download the {layout.kind} {model} because HF_HUB_OFFLINE is set; unset it and retry, "
            "or pass --model PATH to a local copy."
        )
    try:
        files = HfApi().list_repo_files(model, revision=revision)
        folder = Path(
            snapshot_download(
                model, revision=revision, cache_dir=hub_cache_dir(), allow_patterns=layout.files_to_fetch(files)
            )
        )
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise InputError(
            f"The hub has no {layout.kind} {model}"
            + (f" at revision {revision}" if revision else "")
            + "; check the id."
        ) from None
    except (HfHubHTTPError, *_network_errors()) as exc:
        if missing:
            raise InputError(
                f"The {layout.kind} {model} is not in the Hugging Face cache ({hub_cache_dir()}) and downloading it "
                f"failed ({type(exc).__name__}); {_how_to_get(model, revision)}."
            ) from None
        raise InputError(
            f"Could not download the {layout.kind} {model} ({type(exc).__name__}); check the network and retry, "
            "or pass --model PATH to a local copy."
        ) from None
    _check_layout(folder, layout, f"hub repository {model}")
    return folder


def _network_errors() -> tuple[type[Exception], ...]:
    """Exceptions meaning "no network": OS errors and the base error of whichever HTTP client the hub library uses."""
    import importlib

    errors: list[type[Exception]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _cached_snapshot(model: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, revision=revision, cache_dir=hub_cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None


def _check_layout(folder: Path, layout: Layout, where: str) -> None:
    missing = layout.missing(folder)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(
            f"The {where} is not a complete {layout.kind}: it lacks {shown}; "
            "use a full copy of the hub repository layout (img2mesh download fetches one)."
        )
