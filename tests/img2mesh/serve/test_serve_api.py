"""The API of ``img2mesh serve`` on the CPU, through FastAPI's TestClient (the real app, lifespan and job runner).

The job runner is the batch runner's machinery with the tiny random-weight Zero123++ model: every job runs the real
diffusion call, then reconstructs Spot's oracle views (:class:`OracleGridPipeline`), so a job ends in a real mesh.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import PHOTO, wait_for
from stage_settings import TINY

from img2mesh.cli import cli
from img2mesh.run_record import RunRecord, is_complete
from img2mesh.serve.app import ServeSettings, create_app
from img2mesh.serve.store import Job, JobStore
from img2mesh.testing.oracle_grid import OracleGridPipeline

#: Files of a finished job's folder: the layout of `img2mesh run`.
RUN_LAYOUT = {
    "input.png",
    "views.png",
    *(f"views/{i:02d}.png" for i in range(6)),
    "views/posed_views.npz",
    "transforms.json",
    *(f"images/{i:02d}.png" for i in range(6)),
    *(f"masks/{i:02d}.png" for i in range(6)),
    "mesh.glb",
    "preview.png",
    "run.json",
}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def settings(root: Path, tiny_zero123pp: Path, **extra) -> ServeSettings:
    overrides = {"multiview.model": str(tiny_zero123pp), **TINY}
    return ServeSettings(root=root, config_source="cpu", overrides=overrides, cpu_workers=1, **extra)


def photo_bytes(path: Path = PHOTO) -> bytes:
    return path.read_bytes()


def blank_png() -> bytes:
    """A fully transparent photo: a readable image with no object in it."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def post(client: TestClient, data: bytes, name: str = "spot.png", **options) -> tuple[int, dict]:
    response = client.post("/api/jobs", files={"photo": (name, data, "image/png")}, data=options)
    return response.status_code, response.json()


def finished(client: TestClient, job_id: str) -> dict | None:
    job = client.get(f"/api/jobs/{job_id}").json()
    return job if job["state"] in ("done", "failed") else None


@pytest.fixture(scope="module")
def server(tiny_zero123pp: Path, tmp_path_factory: pytest.TempPathFactory):
    """A running server (no warm-up job: the CPU time goes to the tests' jobs) with a 0.5 MB upload limit."""
    root = tmp_path_factory.mktemp("serve")
    app = create_app(settings(root, tiny_zero123pp, max_upload_mb=0.5, warm_up=False), pipeline=OracleGridPipeline)
    with TestClient(app) as client:
        wait_for(lambda: client.get("/api/health").json()["status"] == "ok", timeout=120)
        yield client, root


@pytest.fixture(scope="module")
def jobs(server) -> dict[str, dict]:
    """Three photos uploaded at once from three threads: two of Spot (one with options), one with nothing in it.

    Returns each finished job by role, and the events streamed for the first while it ran."""
    client, _ = server
    submissions = {
        "spot": (photo_bytes(), "spot.png", {}),
        "options": (photo_bytes(), "spot-small.png", {"mesh.faces": "300", "runtime.seed": "7"}),
        "blank": (blank_png(), "blank.png", {"preprocess.remove_bg": "none"}),
    }
    answers: dict[str, tuple[int, dict]] = {}

    def submit(role: str) -> None:
        data, name, options = submissions[role]
        answers[role] = post(client, data, name, **options)

    threads = [threading.Thread(target=submit, args=(role,)) for role in submissions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(code == 201 for code, _ in answers.values()), answers
    ids = {role: job["id"] for role, (_, job) in answers.items()}
    events = []
    with client.stream("GET", f"/api/jobs/{ids['spot']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    result = {role: wait_for(lambda job_id=job_id: finished(client, job_id)) for role, job_id in ids.items()}
    result["events"] = events
    return result


# --------------------------------------------------------------------------------------------------- jobs


def test_concurrent_uploads_become_jobs_in_runs_layout(server, jobs) -> None:
    client, root = server
    spot = jobs["spot"]
    assert spot["state"] == "done" and spot["error"] is None and spot["progress"] == 1.0, spot
    assert {"prepare_input", "generate_views", "pose_views", "fit", "finish", "export", "preview"} <= set(
        spot["timings"]
    )
    assert set(spot["files"]) >= {"mesh.glb", "views.png", "input.png", "preview.png", "transforms.json", "folder.zip"}
    folder = root / spot["id"]
    assert is_complete(folder)
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == RUN_LAYOUT
    # Nothing half-written beside the job folders once everything finished.
    assert not list(root.glob(".*.partial-*")) and not any((root / ".live").glob("*"))

    glb = client.get(f"/api/jobs/{spot['id']}/files/mesh.glb")
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    mesh = trimesh.load(io.BytesIO(glb.content), file_type="glb", force="mesh")
    assert len(mesh.faces) > 100
    for name, size in (("views.png", (640, 960)), ("input.png", (128, 128)), ("preview.png", (64, 64))):
        answer = client.get(f"/api/jobs/{spot['id']}/files/{name}")
        assert Image.open(io.BytesIO(answer.content)).size == size, name
    frames = client.get(f"/api/jobs/{spot['id']}/files/transforms.json").json()["frames"]
    assert len(frames) == 6

    archive = client.get(f"/api/jobs/{spot['id']}/files/folder.zip")
    assert archive.headers["content-disposition"] == 'attachment; filename="spot.zip"'
    names = set(zipfile.ZipFile(io.BytesIO(archive.content)).namelist())
    assert names == {f"spot/{name}" for name in RUN_LAYOUT}


def test_job_options_reach_the_run(server, jobs) -> None:
    _, root = server
    job = jobs["options"]
    assert job["state"] == "done" and job["options"] == {"mesh.faces": 300, "runtime.seed": 7}
    record = RunRecord.load(root / job["id"])
    assert record.config["mesh"]["faces"] == 300 and record.seed == 7
    assert RunRecord.load(root / jobs["spot"]["id"]).config["mesh"]["faces"] == TINY["mesh.faces"]


def test_events_follow_the_job_to_its_end(jobs) -> None:
    events = jobs["events"]
    assert events[-1]["state"] == "done" and events[-1]["progress"] == 1.0
    states = [event["state"] for event in events]
    assert "running" in states or len(events) == 1  # a job finished before the stream opened sends one event
    progress = [event["progress"] for event in events]
    assert progress == sorted(progress)  # never goes back


def test_a_failing_job_says_why_and_the_server_stays_up(server, jobs) -> None:
    client, root = server
    blank = jobs["blank"]
    assert blank["state"] == "failed" and blank["error"].endswith("."), blank
    assert "Nothing of the object is left" in blank["error"], blank["error"]
    assert not (root / blank["id"]).exists() and blank["files"] == []
    assert client.get("/api/health").json()["status"] == "ok"
    listed = [job["id"] for job in client.get("/api/jobs").json()]
    assert set(listed) >= {jobs[role]["id"] for role in ("spot", "options", "blank")}


def test_delete_removes_the_job_and_its_folder(server, jobs, tiny_zero123pp: Path) -> None:
    client, root = server
    code, job = post(client, photo_bytes(), "to-delete.png")
    assert code == 201
    done = wait_for(lambda: finished(client, job["id"]))
    assert done["state"] == "done" and (root / job["id"]).is_dir()
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert not (root / job["id"]).exists() and not list((root / "uploads").glob(f"{job['id']}.*"))
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 404


# ---------------------------------------------------------------------------------------------- bad input


def cli_sentence(*args: str) -> str:
    """What `img2mesh run` prints for the same mistake (without "Error: ")."""
    result = CliRunner().invoke(cli, ["run", str(PHOTO), "--quiet", *args])
    assert result.exit_code == 2, result.output
    return result.output.strip().removeprefix("Error: ")


@pytest.mark.parametrize(
    ("data", "options", "status", "words"),
    [
        (b"GIF89a not really", {}, 422, "is not a readable image"),
        (b"", {}, 422, "is empty (0 bytes)"),
        (b"\x89PNG" + b"0" * 600_000, {}, 413, "larger than this server's limit of 0.5 MB"),
        (None, {"steps": "3"}, 422, "Unknown option 'steps'; options are config keys"),
        (None, {"multiview.steps": "[1"}, 422, "is not valid YAML"),
        (None, {"multiview.model": "other/model"}, 422, "fixed by the server"),
    ],
    ids=["not-an-image", "empty", "oversize", "not-a-config-key", "bad-yaml", "server-key"],
)
def test_bad_uploads_get_their_status_and_sentence(server, data, options, status, words) -> None:
    client, root = server
    before = sorted(p.name for p in (root / "uploads").iterdir())
    code, answer = post(client, photo_bytes() if data is None else data, "photo.png", **options)
    assert code == status and words in answer["detail"], answer
    assert answer["detail"].endswith("."), answer
    assert sorted(p.name for p in (root / "uploads").iterdir()) == before  # nothing stored


@pytest.mark.parametrize(
    ("options", "cli_args"),
    [
        ({"mesh.bogus": "1"}, ["--set", "mesh.bogus=1"]),
        ({"multiview.steps": "many"}, ["--set", "multiview.steps=many"]),
        ({"export.format": "fbx"}, ["--set", "export.format=fbx"]),
    ],
    ids=["unknown-key", "wrong-type", "wrong-choice"],
)
def test_invalid_options_get_the_clis_sentence(server, options, cli_args) -> None:
    client, _ = server
    code, answer = post(client, photo_bytes(), **options)
    # The same sentence, naming where the value came from: the job option instead of --set.
    ((key, value),) = options.items()
    expected = cli_sentence("--config", "cpu", *cli_args).replace(
        f"--set {key}={value}", f"the job option {key}={value}"
    )
    assert code == 422 and answer["detail"] == expected, answer


def test_missing_photo_is_one_sentence(server) -> None:
    client, _ = server
    answer = client.post("/api/jobs", data={"mesh.faces": "300"})
    assert answer.status_code == 422 and "photo" in answer.json()["detail"], answer.json()


def test_ids_and_file_names_cannot_leave_the_job_folder(server, jobs) -> None:
    client, _ = server
    job_id = jobs["spot"]["id"]
    for url in (
        f"/api/jobs/{job_id}/files/..%2F..%2Fjobs.sqlite",
        f"/api/jobs/{job_id}/files/run.json%00.png",
        f"/api/jobs/{job_id}/files/jobs.sqlite",
        f"/api/jobs/{job_id}/files/views%2F00.png",
        "/api/jobs/..%2Fuploads/files/mesh.glb",
        "/api/jobs/not-a-job",
        f"/api/jobs/{job_id.upper()}",
    ):
        answer = client.get(url)
        assert answer.status_code == 404, url
        assert answer.json()["detail"].endswith("."), (url, answer.json())
    assert client.get("/api/jobs/../../etc/passwd").status_code == 404


def test_page_docs_and_viewer_are_served_offline(server) -> None:
    client, _ = server
    page = client.get("/")
    assert page.status_code == 200 and "/static/vendor/model-viewer/model-viewer.min.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
    viewer = client.get("/static/vendor/model-viewer/model-viewer.min.js")
    assert viewer.status_code == 200 and len(viewer.content) > 500_000
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text
    spec = client.get("/openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/files/{name}", "/api/health"} <= set(spec["paths"])


# ----------------------------------------------------------------------------------------- restart, token


def test_restart_keeps_finished_jobs_and_resumes_queued_ones_behind_a_token(server, jobs, tiny_zero123pp: Path) -> None:
    _, root = server
    # A second server on a copy of the folder, as after a crash: one job was running, one queued.
    copy = root.parent / f"{root.name}-restarted"
    shutil.copytree(root, copy)  # with the write-ahead log: what a crash leaves
    store = JobStore(copy)
    for job_id, state in (("a" * 16, "running"), ("b" * 16, "queued")):
        shutil.copy(PHOTO, copy / "uploads" / f"{job_id}.png")
        store.add(Job(id=job_id, name=f"{state}.png", state=state, stage="fit" if state == "running" else None))
    store.close()
    # What a kill leaves half-written: a job folder under its temporary name, an upload cut off, live files.
    leftovers = [copy / ".abc.partial-0123" / "input.png", copy / "uploads" / ".cc.png.partial", copy / ".live" / "x"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    app = create_app(settings(copy, tiny_zero123pp, token="s3cret", warm_up=False), pipeline=OracleGridPipeline)
    with TestClient(app) as restarted:
        assert restarted.get("/api/health").status_code == 200  # the health check needs no token
        assert not any(path.exists() for path in leftovers) and not (copy / ".abc.partial-0123").exists()
        refused = restarted.get("/api/jobs")
        assert refused.status_code == 401 and "Bearer" in refused.json()["detail"]
        assert restarted.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert restarted.get("/").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        listed = {job["id"]: job for job in restarted.get("/api/jobs", headers=auth).json()}
        assert listed[jobs["spot"]["id"]]["state"] == "done"  # finished jobs stay listed
        for job_id in ("a" * 16, "b" * 16):  # the running one was re-queued; both run now
            done = wait_for(lambda job_id=job_id: finished_with(restarted, job_id, auth))
            assert done["state"] == "done", done
            assert is_complete(copy / job_id)
        # The page: /?token= sets a cookie once, then the page, its files and the API work with it.
        opened = restarted.get("/?token=s3cret", follow_redirects=False)
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        assert restarted.get("/").status_code == 200
        assert restarted.get(f"/api/jobs/{'a' * 16}/files/mesh.glb").status_code == 200


def finished_with(client: TestClient, job_id: str, headers: dict) -> dict | None:
    job = client.get(f"/api/jobs/{job_id}", headers=headers).json()
    return job if job["state"] in ("done", "failed") else None


def test_store_requeues_running_jobs_and_lists_newest_first(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    store.add(Job(id="1" * 16, name="a.png", state="done", timings={"fit": 1.5}))
    store.add(Job(id="2" * 16, name="b.png", state="running", stage="fit"))
    store.add(Job(id="3" * 16, name="c.png"))
    store.close()
    again = JobStore(tmp_path)
    assert again.requeue_running() == 1
    assert [job.id for job in again.jobs()] == ["3" * 16, "2" * 16, "1" * 16]
    assert list(again.queued_ids()) == ["2" * 16, "3" * 16]  # in submission order
    assert again.get("2" * 16).stage is None and again.get("1" * 16).timings == {"fit": 1.5}


def test_host_warning() -> None:
    from img2mesh.commands.serve import host_warning

    assert host_warning("127.0.0.1") is None and host_warning("::1") is None and host_warning("localhost") is None
    assert "reachable from other machines" in host_warning("0.0.0.0")
