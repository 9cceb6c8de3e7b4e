"""Settings the end-to-end tests share (tests/ is on sys.path through its conftest.py)."""

#: On top of the CPU preset: the smallest settings that still run every stage.
TINY = {
    "multiview.steps": 2,
    "preprocess.size": 128,
    "recon.image_size": 64,
    "recon.hull_resolution": 32,
    "recon.resolutions": [24],
    "recon.iterations": [8],
    "recon.rays": 512,
    "recon.samples": 24,
    "recon.colour_resolution": 16,
    "mesh.faces": 400,
    "texture.size": 64,
    "preview.size": 64,
}
