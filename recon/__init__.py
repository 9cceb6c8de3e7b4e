"""recon: everything 3D in img2mesh — cameras, posed views, datasets, reconstruction, meshing, texturing, export,
the ground-truth renderer and metrics. It never imports ``img2mesh``; ``img2mesh`` drives it."""
