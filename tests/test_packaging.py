"""What a wheel holds: every package folder, the presets and the type markers (CI also installs the wheel and runs
``img2mesh recon`` from it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("img2mesh", "recon")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert folders <= set(setuptools["packages"]), "add the new package to [tool.setuptools] packages in pyproject.toml"
    assert setuptools["package-dir"]["img2mesh.configs"] == "configs"
    assert (REPO / "img2mesh" / "py.typed").is_file() and (REPO / "recon" / "py.typed").is_file()
