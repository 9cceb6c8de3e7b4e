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
