"""Shared pytest fixtures (session-scoped where building is costly)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Small committed test inputs (tokenizer vocabulary, ...).
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def tiny_zero123pp(tmp_path_factory) -> Path:
    """Folder of a tiny random-weight Zero123++ v1.2 model in the real hub layout, built once per session.

    Load it with ``Zero123PlusPipeline.from_pretrained(path)``; a tiny random normal ControlNet sits in
    ``path / "normal_controlnet"``. Treat the folder as read-only: every test shares it.
    """
    from img2mesh.testing.random_weights import save_random_zero123pp

    folder = tmp_path_factory.mktemp("zero123pp") / "tiny-zero123plus-v1.2"
    return save_random_zero123pp(
        folder, size="tiny", version="v1.2", with_controlnet=True, tokenizer_files=TEST_DATA / "tiny_clip_tokenizer"
    )


@pytest.fixture(scope="session")
def tiny_pipe(tiny_zero123pp):
    """The tiny random model through ``from_pretrained`` (fp32, CPU, default Euler-ancestral trailing sampler)."""
    from img2mesh.zero123pp import Zero123PlusPipeline

    pipe = Zero123PlusPipeline.from_pretrained(tiny_zero123pp)
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: Node tools of the tests (``npm ci --prefix tests/tools`` installs them; .ci/run does).
TEST_TOOLS = Path(__file__).resolve().parent / "tools"


@pytest.fixture(scope="session")
def gltf_validator():
    """``validate(*paths)``: the Khronos glTF-Validator's report of each file (a dict with ``issues``), run by node.

    Fails (rather than skips) when node or the validator is missing: every exported GLB is meant to be checked.
    """
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    script = TEST_TOOLS / "validate_gltf.js"
    if node is None or not (TEST_TOOLS / "node_modules" / "gltf-validator").is_dir():
        pytest.fail("The glTF-Validator is not installed: install node and run `npm ci --prefix tests/tools`.")

    def validate(*paths: Path) -> list[dict]:
        done = subprocess.run([node, str(script), *map(str, paths)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return validate
