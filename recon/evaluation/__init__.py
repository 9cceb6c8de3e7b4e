"""Evaluation, not product: ground-truth ("oracle") views of a known mesh, the imperfections a multi-view diffusion
model adds to them, reconstruction metrics, checks of the exported mesh and the plain visual-hull baseline.

Tests and benchmarks import these modules; nothing on the path from a photo to a mesh does.
"""
