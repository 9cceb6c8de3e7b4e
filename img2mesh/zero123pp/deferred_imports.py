"""Load the diffusers modules Zero123++ uses, not every model diffusers ships: seconds off every cold call.

diffusers' packages ``models.autoencoders``, ``models.unets``, ``models.transformers`` and ``hooks`` import every
class they hold in their ``__init__``: importing ``diffusers.models.autoencoders.autoencoder_kl`` alone ran some 40
autoencoders, a dozen UNets, 60 transformers and every hook, with what those pull in (peft, scipy.stats through the
single-file loaders, the video and audio models' helpers). Zero123++ needs one VAE, one UNet and two transformer
blocks. The import of our pipeline took 10.9 s on the CPU machine, ~2.5 s of it this fan-out (benchmarks/RESULTS.md,
"cold CLI calls"); the seconds left are torch, ``torch._dynamo`` (which ``diffusers.utils`` imports) and
transformers, which no choice of submodule avoids (a package's ``__init__`` always runs before its modules).

:func:`install` puts a finder in front of ``sys.meta_path`` that gives those four packages an unexecuted module
(its ``__path__`` set, so ``import diffusers.models.unets.unet_2d_condition`` loads that one file). The first time
anything asks such a package for a name it does not hold yet (``from diffusers.models.unets import X``,
``diffusers.models.autoencoders.AutoencoderKL``), its real ``__init__`` runs in full: every name that was there is
still there, only later. The finder acts only on these four names, and only until each is imported.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from types import ModuleType

#: The packages whose ``__init__`` is deferred: each only re-exports its modules' classes.
DEFERRED = frozenset(
    {
        "diffusers.models.autoencoders",
        "diffusers.models.unets",
        "diffusers.models.transformers",
        "diffusers.hooks",
    }
)

_lock = threading.Lock()  # guards sys.meta_path edits


class _DeferredInitFinder(importlib.abc.MetaPathFinder):
    """Finds a :data:`DEFERRED` package with the finders after it and defers the execution of its ``__init__``."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in DEFERRED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is None or spec.submodule_search_locations is None:
                    return spec  # not a regular package (namespace, frozen): nothing to defer
                spec.loader = _DeferredInitLoader(spec.loader)
                return spec
        return None


class _DeferredInitLoader(importlib.abc.Loader):
    """Creates the package module as its real loader would and runs its ``__init__`` at the first missing name."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        lock = threading.RLock()  # re-entrant: the __init__ may read its own package while it runs

        def __getattr__(name: str):
            with lock:
                if module.__dict__.get("__getattr__") is __getattr__:
                    del module.__dict__["__getattr__"]
                    self.loader.exec_module(module)
            return getattr(module, name)

        module.__getattr__ = __getattr__


_finder = _DeferredInitFinder()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once). Packages imported before are not affected."""
    with _lock:
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Take the finder off ``sys.meta_path``; packages it already created keep their deferred ``__init__``."""
    with _lock:
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
