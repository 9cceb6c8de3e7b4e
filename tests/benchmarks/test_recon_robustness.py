"""benchmarks/recon_robustness.py --smoke runs as CI runs it and writes the table it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_run_writes_both_tables(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    command = [sys.executable, str(ROOT / "benchmarks" / "recon_robustness.py"), "--smoke", "--tables-dir", tmp_path]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "recon_robustness.md").read_text()
    assert "config cpu" in text and "masks grid" in text and "--smoke" in text

    number = r" \| ([\d.]+)"
    rows = re.findall(r"^\| (fit|hull) \| ([\d.]+) \| (\w+)" + number * 4 + r" \|", text, re.M)
    summary = [(m, s) for m, s, meshes, *_ in rows if meshes == "1"]
    per_mesh = {(m, s): tuple(map(float, values)) for m, s, mesh, *values in rows if mesh == "duck"}
    assert summary == [("fit", "0"), ("hull", "0"), ("fit", "1"), ("hull", "1")]
    assert set(per_mesh) == {("fit", "0"), ("hull", "0"), ("fit", "1"), ("hull", "1")}
    for chamfer, f02, f05, psnr in per_mesh.values():
        assert 0 < chamfer < 0.1 and 0 <= f02 <= f05 <= 1 and psnr > 10
    # the clean grid, read back with derived masks, carves a duck; the imperfect one carves a different one
    assert per_mesh["hull", "0"][2] > 0.9
    assert per_mesh["hull", "1"] != per_mesh["hull", "0"]
