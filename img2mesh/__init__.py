"""img2mesh: one photo of an object in, a textured 3D mesh out.

The stages (preprocess → Zero123++ views → posed views → reconstruction → export) are usable alone; see the README
for the Python API and ``img2mesh --help`` for the command line.
"""

__version__ = "0.1.0"
