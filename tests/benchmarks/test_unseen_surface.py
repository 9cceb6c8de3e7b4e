"""benchmarks/unseen_surface.py prints, per test mesh and pose set, the share of its surface no view sees."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_cake_hides_much_of_its_surface_and_the_banana_none():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "benchmarks" / "unseen_surface.py"), "--meshes", "cake", "ycb_banana"]
    done = subprocess.run([*command, "--samples", "4000"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = dict(
        (mesh, tuple(map(float, shares)))
        for mesh, *shares in re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \|$", done.stdout, re.M)
    )
    assert set(rows) == {"cake", "ycb_banana"}
    assert min(rows["cake"]) > 0.3  # faces that its other parts (594 of them) cover from every view
    assert max(rows["ycb_banana"]) < 0.01
