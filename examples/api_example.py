"""img2mesh from Python, three ways in.

    python examples/api_example.py                      # views → mesh, offline, no weights (CPU preset)
    python examples/api_example.py examples/photos/*.png   # photos → meshes (needs the Zero123++ weights)

1. Views you already have: a Zero123++ grid → posed views → fitted fields → textured mesh → GLB.
2. Many photos with one model load: ``Img2Mesh(config).load()``, then ``run`` per photo (or call the stages).
3. One photo, one call: ``img2mesh.run(photo, out_dir)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import img2mesh
from img2mesh.pipeline import Img2Mesh

EXAMPLES = Path(__file__).resolve().parent


def views_to_mesh(out: Path) -> None:
    """Way 1: the stages after the diffusion model, on the shipped example grid."""
    from PIL import Image

    pipeline = Img2Mesh(img2mesh.load_config("cpu"))  # no .load(): these stages need no diffusion model
    views = pipeline.pose_views(Image.open(EXAMPLES / "spot_views.png"))
    fields = pipeline.fit(views)  # the GPU half (runs on the CPU here)
    meshes = pipeline.finish(fields, views)  # the CPU half: mesh, clean-up, UV unwrap, baked texture
    files = pipeline.export(meshes, out / "spot.glb")  # standing on y = 0, export.height metres high
    pipeline.preview(files[0], out / "spot_preview.png")
    print(f"{len(meshes[0].faces)} faces -> {files[0]}")


def photos_to_meshes(photos: list[Path], out: Path) -> None:
    """Way 2: load the model once, run every photo; each gets out/<stem>/ with run.json."""
    pipeline = Img2Mesh(img2mesh.load_config(overrides={"multiview.steps": 28})).load()
    for photo in photos:
        record = pipeline.run(photo, out / photo.stem)
        print(f"{photo.name}: {record.total_seconds:.1f} s, mesh {record.outputs['mesh']}")


if __name__ == "__main__":
    out = Path("out/api_example")
    out.mkdir(parents=True, exist_ok=True)
    photos = [Path(p) for p in sys.argv[1:]]
    if not photos:
        views_to_mesh(out)
    elif len(photos) == 1:
        # Way 3: one call does everything.
        print(img2mesh.run(photos[0], out, export=out / f"{photos[0].stem}.glb").outputs)
    else:
        photos_to_meshes(photos, out)
