"""A virtual environment holding exactly img2mesh's installed dependencies, for cold calls as a user's install runs.

Importing diffusers and transformers costs seconds more when optional packages they probe for are installed: with
peft present, diffusers imports it (~3.5 s on the H200 machine of RESULTS' cold calls); with scikit-learn present,
transformers' generation utilities import it (~2 s). `pip install img2mesh` installs neither (peft only with the
`train` extra), but a shared machine's Python may hold both, and then a cold call measured there pays for packages
the product never asked for. :func:`dependency_env` builds a venv without system site-packages whose site-packages
links in only the distributions that img2mesh's requirements (pyproject.toml, no extras) reach, transitively, from
those installed here; the distributions it cannot find (not installed here) are listed, so a reader sees what the
environment lacks compared with a real install.

    python benchmarks/dependency_env.py DEST    # build it, print its python and what it holds
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent


def requirement_closure(requirements: list[str]) -> tuple[dict[str, metadata.Distribution], set[str]]:
    """The installed distributions ``requirements`` reach, transitively (each one's markers read with the extras
    asked of it, as pip reads them), by canonical name, and the names of those that are not installed."""
    installed: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():  # first on sys.path wins, as for an import
        installed.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    found: dict[str, metadata.Distribution] = {}
    extras_done: dict[str, set[str]] = {}
    missing: set[str] = set()
    queue = [r for r in map(Requirement, requirements) if _applies(r, "")]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        dist = installed.get(name)
        if dist is None:
            missing.add(name)
            continue
        extras = {"", *requirement.extras} - extras_done.setdefault(name, set())
        if not extras:
            continue
        found[name] = dist
        extras_done[name] |= extras
        queue += [r for r in map(Requirement, dist.requires or []) if any(_applies(r, e) for e in extras)]
    return found, missing


def _applies(requirement: Requirement, extra: str) -> bool:
    """Whether ``requirement`` holds on this machine for a distribution installed with ``extra`` ("": none)."""
    return requirement.marker is None or requirement.marker.evaluate({"extra": extra})


def top_level_entries(dist: metadata.Distribution) -> set[Path]:
    """The files and folders directly in a distribution's site-packages folder that belong to it."""
    root = Path(dist.locate_file("")).resolve()
    entries = set()
    for file in dist.files or []:
        parts = Path(file).parts
        if not parts or parts[0] in ("..", "__pycache__") or Path(file).is_absolute():
            continue  # scripts in bin/, byte code beside a top-level module
        entries.add(root / parts[0])
    return entries


def dependency_env(dest: Path, extra: tuple[str, ...] = ()) -> tuple[Path, dict[str, str], set[str]]:
    """Build the venv at ``dest``: its python, the linked distributions' versions, and the missing requirements.
    ``extra``: requirements beside img2mesh's (the reference pipeline's torchvision)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found, missing = requirement_closure([*project["dependencies"], *extra])
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    site = next(dest.glob("lib/python*/site-packages"))
    for dist in found.values():
        for entry in top_level_entries(dist):
            link = site / entry.name
            if entry.exists() and not link.exists():  # a namespace folder (nvidia/) shared by several: once
                link.symlink_to(entry)
    versions = {name: dist.version for name, dist in sorted(found.items())}
    return dest / "bin" / "python", versions, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="folder of the new virtual environment")
    parser.add_argument("--extra", nargs="*", default=[], help="requirements beside img2mesh's")
    args = parser.parse_args()
    python, versions, missing = dependency_env(args.dest, tuple(args.extra))
    print(python)
    print("linked:", " ".join(f"{name}=={version}" for name, version in versions.items()))
    print("not installed here:", " ".join(sorted(missing)) or "none")


if __name__ == "__main__":
    main()
