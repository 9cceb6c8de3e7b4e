"""The page of ``img2mesh serve`` in a real browser: Debian's headless Chromium driven by Playwright.

A real uvicorn on 127.0.0.1 serves the app with the tiny random-weight model (the real diffusion call, then Spot's
oracle views, so the job ends in a real mesh). The test uploads a photo through the page's file input, waits for the
3D viewer to load the mesh, checks that the viewer's canvas shows the mesh (pixels other than its background), and
downloads the GLB through the page's button. Chromium comes from the system (``/usr/bin/chromium``, Debian's
package); nothing downloads a browser. WebGL runs on SwiftShader, Chromium's CPU renderer.
"""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from serve_helpers import PHOTO, wait_for
from stage_settings import TINY

from img2mesh.serve.app import ServeSettings, create_app
from img2mesh.testing.oracle_grid import OracleGridPipeline

CHROMIUM = Path("/usr/bin/chromium")

#: Flags for a closed network and no GPU: no background connections, no sandbox (CI runs as root), WebGL on
#: SwiftShader.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]

#: The viewer's background colour (style.css: model-viewer's background-color).
VIEWER_BACKGROUND = (0xE9, 0xED, 0xF1)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def live_server(tiny_zero123pp: Path, tmp_path: Path):
    """A real uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    overrides = {"multiview.model": str(tiny_zero123pp), **TINY}
    settings = ServeSettings(
        root=tmp_path / "jobs", config_source="cpu", overrides=overrides, cpu_workers=1, warm_up=False
    )
    app = create_app(settings, pipeline=OracleGridPipeline)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=120)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=300)


def test_photo_to_mesh_in_the_browser(live_server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "install Debian's chromium package (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400}, accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(live_server + "/")
            page.wait_for_selector("#health.ok", timeout=120_000)
            page.set_input_files("#file", str(PHOTO))
            # The cut-out and the views appear first, then the viewer loads the mesh.
            page.wait_for_selector("#views:not([hidden])", timeout=300_000)
            page.wait_for_function("document.body.dataset.viewerLoaded", timeout=300_000)
            page.wait_for_timeout(1500)  # a few frames after the load: the first one may still be blank
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            shot = np.asarray(Image.open(io.BytesIO(page.locator("#viewer").screenshot())).convert("RGB"))
            differs = np.abs(shot.astype(int) - VIEWER_BACKGROUND).sum(-1) > 30
            assert 0.02 < differs.mean() < 0.9, differs.mean()  # the mesh covers part of the canvas
            assert "spot.png" in page.locator("#jobs").inner_text()

            with page.expect_download() as download:
                page.click("#download-mesh-glb")
            path = tmp_path / "downloaded.glb"
            download.value.save_as(path)
            assert path.read_bytes()[:4] == b"glTF"
            assert len(trimesh.load(path, force="mesh").faces) > 100
            assert errors == []
        finally:
            browser.close()
