"""``python -m img2mesh``: the ``img2mesh`` command line."""

from img2mesh.cli import main

if __name__ == "__main__":
    main()
