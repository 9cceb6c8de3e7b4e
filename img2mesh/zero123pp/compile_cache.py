"""Where the compiled mode's kernels are kept between runs: Inductor's on-disk cache, plus one file of torch's
compile artifacts per model and shapes.

Why. The compiled mode turns a step into ~60 graphs; compiling them is slow the first time (tracing, lowering,
code generation; Inductor compiles the kernels on ``TORCHINDUCTOR_COMPILE_THREADS`` processes, by default one per
core up to 32), while a later run reads them back. Inductor's own cache (:func:`compile_cache_dir`) keeps every
compiled graph on this machine. After the first warm-up, :func:`save` also writes what it compiled
(``torch.compiler.save_cache_artifacts``) into one file of that folder, named by :func:`artifacts_file` (model
configuration, input shapes and dtypes, versions, card, the source of the step); :func:`load` reads it back
(``torch.compiler.load_cache_artifacts``) before a later run compiles, so a copy of the file is enough to start
warm on a machine or in a container whose Inductor cache is empty. A file that cannot be read costs a log line
and a compile, never the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: Folder of :func:`compile_cache_dir` holding the artifact files (``<key>.bin``).
ARTIFACTS = "img2mesh_artifacts"
#: The modules whose source decides what a step compiles to (part of an artifact file's name).
STEP_SOURCES = ("attention.py", "fast_step.py", "unet_patches.py", "compile_cache.py")


def compile_cache_dir() -> Path:
    """Inductor's cache folder: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else ``<user cache>/img2mesh/torchinductor``
    (set in the environment before the first compilation, so compiled kernels survive the process)."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base / "img2mesh" / "torchinductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def cache_filled() -> bool:
    """Whether a first warm-up left an artifact file in :func:`compile_cache_dir` (any model and shapes: a hint,
    not a guarantee that this model's graphs are cached)."""
    return any((compile_cache_dir() / ARTIFACTS).glob("*.bin"))


def artifacts_file(spec: dict) -> Path:
    """The artifact file for ``spec`` (what the compiled code depends on, JSON-able) on this torch, diffusers,
    Python and card, with this source of the step."""
    import diffusers

    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for name in STEP_SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    digest.update(f"{torch.__version__} {diffusers.__version__} {sys.version}".encode())
    if torch.cuda.is_available():
        digest.update(torch.cuda.get_device_name().encode())
    return compile_cache_dir() / ARTIFACTS / f"{digest.hexdigest()[:24]}.bin"


def load(path: Path) -> frozenset[str]:
    """Hand the compile artifacts in ``path`` to torch's caches; returns the keys of the graphs it held (empty:
    no file, or one this torch cannot read, which is logged and left for :func:`save` to replace)."""
    if not path.is_file():
        return frozenset()
    why = "not a compile-artifacts file of this torch"
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as error:  # torch reads what it can and returns None; anything else is the same verdict
        info, why = None, f"{type(error).__name__}: {error}"
    if info is None:
        logger.warning("compile cache: ignored %s (%s); this warm-up compiles and rewrites it", path, why)
        return frozenset()
    keys = frozenset(key for keys in info.artifacts.values() for key in keys)
    graphs = len(info.artifacts.get("inductor", []))
    logger.info("compile cache: loaded %d artifacts (%d graphs) from %s", len(keys), graphs, path)
    return keys


def save(path: Path, loaded: frozenset[str] = frozenset()) -> bool:
    """Write the artifacts of everything this process compiled (or read from the cache) to ``path``, unless they
    are all in the file already (``loaded``, from :func:`load`); returns whether it wrote. Written whole, then
    renamed into place, so a reader never sees half a file."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:  # nothing compiled through Inductor (another backend, or every block fell back)
        return False
    data, info = saved
    keys = {key for keys in info.artifacts.values() for key in keys}
    if keys <= loaded:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(path)
    logger.info("compile cache: saved %d artifacts (%.1f MB) to %s", len(keys), len(data) / 1e6, path)
    return True
