"""img2mesh: one photo of an object in, a textured 3D mesh out.

The stages (preprocess → Zero123++ views → posed views → reconstruction → export) are usable alone; see the README
for the Python API and ``img2mesh --help`` for the command line.
"""

__version__ = "0.1.0"

#: Public names loaded on first use, so that ``import img2mesh`` (and ``img2mesh --help``) stays free of torch.
_LAZY = {
    "run": "img2mesh.pipeline",
    "Img2Mesh": "img2mesh.pipeline",
    "RunRecord": "img2mesh.run_record",
    "load_config": "img2mesh.config",
    "Img2MeshConfig": "img2mesh.config",
}

__all__ = ["Img2Mesh", "Img2MeshConfig", "RunRecord", "__version__", "load_config", "run"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'img2mesh' has no attribute {name!r}")
