"""What a batch job works on: the items named by folders, globs and list files, each with a stable key.

A batch over thousands of photos is rerun after crashes, extended with new photos, and split over machines, so every
item needs a name that does not depend on the rest of the job: its key, the photo's stem plus a short hash of its
absolute path or URI (``chair-3f9a1c2b``). Two ``chair.png`` in different folders get different keys; the same file
gets the same key in every run, on every shard, which is what lets a rerun skip finished items and ``--shard``
split the work without overlap. The key is also the name of the item's output folder.

URIs (``file://``, ``http://``, ``https://``) are accepted in list files and on the command line; remote ones are
fetched with :mod:`urllib` only when their item runs, into a cache folder, so a dead link fails its own item only.
"""

from __future__ import annotations

import glob
import hashlib
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from img2mesh.errors import InputError

if TYPE_CHECKING:
    from img2mesh.config import Img2MeshConfig

#: URI schemes fetched over the network.
REMOTE_SCHEMES = ("http", "https")

#: Characters of the hash in a key: 8 hex digits make a collision among a million items unlikely (~1e-4).
HASH_CHARS = 8

#: Seconds a remote input may take to answer.
FETCH_TIMEOUT = 60


@dataclass(frozen=True)
class BatchItem:
    """One input of a batch job."""

    key: str
    """Stable name: stem plus a hash of ``source``; the item's output folder and manifest key."""
    source: str
    """Absolute path or URI of the photo."""
    config: Img2MeshConfig | None = field(default=None, compare=False)
    """This item's own config (a server job's options); None: the runner's. Keys that choose the model must match
    the runner's, which loaded it once."""

    @property
    def is_remote(self) -> bool:
        """Whether the photo must be fetched over the network."""
        return urllib.parse.urlsplit(self.source).scheme in REMOTE_SCHEMES


def item_for(source: str) -> BatchItem:
    """The item of one path or URI (relative paths are taken from the current folder)."""
    scheme = urllib.parse.urlsplit(source).scheme
    if scheme == "file":
        source = str(Path(urllib.request.url2pathname(urllib.parse.urlsplit(source).path)).resolve())
    elif scheme in REMOTE_SCHEMES:
        pass
    else:
        source = str(Path(source).expanduser().resolve())
    stem = PurePosixPath(urllib.parse.urlsplit(source).path).stem if scheme in REMOTE_SCHEMES else Path(source).stem
    digest = hashlib.sha1(source.encode()).hexdigest()[:HASH_CHARS]
    return BatchItem(key=f"{_safe(stem) or 'item'}-{digest}", source=source)


def collect_items(specs: list[str]) -> list[BatchItem]:
    """Every item named by ``specs`` (folders, globs, list files, photos, URIs), each once, in a stable order.

    A folder gives its photos (not recursive), a glob its matching photos, a ``.txt``/``.lst`` file one path or URI
    per line (``#`` comments and blank lines skipped, relative paths taken from the list's folder).
    """
    if not specs:
        raise InputError("No inputs given; pass a folder of photos, a glob, or a text file listing paths or URIs.")
    sources: list[str] = []
    for spec in specs:
        sources.extend(_expand(spec))
    items = {item.key: item for item in map(item_for, sources)}
    return sorted(items.values(), key=lambda item: item.key)


def _expand(spec: str) -> list[str]:
    """The photos ``spec`` names: a folder's or a glob's image files, a list file's lines, a file or a URI as is."""
    from recon.posed_views import IMAGE_SUFFIXES

    scheme = urllib.parse.urlsplit(spec).scheme
    if scheme in (*REMOTE_SCHEMES, "file"):
        return [spec]
    path = Path(spec).expanduser()
    if path.is_dir():
        photos = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not photos:
            raise InputError(f"Folder {spec} holds no photos ({', '.join(IMAGE_SUFFIXES)}); point at another folder.")
        return photos
    if path.is_file():
        if path.suffix.lower() in (".txt", ".lst", ".list"):
            return _read_list(path)
        return [str(path)]
    if glob.has_magic(spec):
        matches = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not matches:
            raise InputError(f"The pattern {spec!r} matches no photos; check it (quote it so the shell leaves it).")
        return matches
    raise InputError(f"Input {spec} does not exist; pass a folder, a glob, a photo, or a text file of paths.")


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the input list {path} ({exc.__class__.__name__}); check the file.") from None
    sources = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if urllib.parse.urlsplit(entry).scheme in (*REMOTE_SCHEMES, "file"):
            sources.append(entry)
        else:
            sources.append(str(path.parent / Path(entry).expanduser()))
    if not sources:
        raise InputError(f"The input list {path} names no photos; write one path or URI per line.")
    return sources


def local_path(item: BatchItem, cache: Path) -> Path:
    """A local file holding the item's photo: the path itself, or the URI fetched once into ``cache``."""
    if not item.is_remote:
        return Path(item.source)
    suffix = PurePosixPath(urllib.parse.urlsplit(item.source).path).suffix.lower() or ".img"
    target = cache / f"{item.key}{suffix}"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Downloaded beside the target and renamed, so a broken transfer never leaves a file that looks fetched.
    with tempfile.NamedTemporaryFile(dir=cache, prefix=f".{item.key}.", delete=False) as partial:
        try:
            with urllib.request.urlopen(item.source, timeout=FETCH_TIMEOUT) as response:
                shutil.copyfileobj(response, partial)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            partial.close()
            Path(partial.name).unlink(missing_ok=True)
            reason = getattr(exc, "reason", None) or exc.__class__.__name__
            raise InputError(f"Cannot fetch {item.source} ({reason}); check the URI or download it first.") from None
    Path(partial.name).replace(target)
    return target


def _safe(stem: str) -> str:
    """The stem with only characters that are safe in a folder name everywhere."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._")[:80]
