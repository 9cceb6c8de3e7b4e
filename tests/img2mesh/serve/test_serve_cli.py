"""``img2mesh serve`` as a user runs it: a real process on 127.0.0.1, stopped with Ctrl-C (SIGINT) mid-job, restarted.

The tiny random-weight model draws noise, which reconstruction refuses, so these jobs end failed with their sentence
(the API tests cover finished meshes); what is under test is the process: the jobs in flight are finished when it
is stopped, the queued ones stay queued and run after the restart, nothing half-written is left, and the command's
own checks refuse what they can before the model loads.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from serve_helpers import PHOTO, wait_for

from img2mesh.cli import cli
from img2mesh.run_record import is_complete
from img2mesh.serve.store import JobStore

#: Enough denoising steps that a job is still diffusing when the test presses Ctrl-C.
STEPS = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(root: Path, port: int, model: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-c", "from img2mesh.cli import main; main()", "serve", str(root), "--port", str(port)]
    command += ["--model", str(model), "--config", "cpu", "--steps", str(STEPS), "--no-warm-up", "--quiet", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ready(client: httpx.Client, process: subprocess.Popen) -> bool:
    assert process.poll() is None, process.stdout.read()
    try:
        return client.get("/api/health").json()["status"] == "ok"
    except httpx.TransportError:
        return False


def interrupt(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def test_ctrl_c_finishes_the_running_job_keeps_the_queue_and_restart_resumes(
    tiny_zero123pp: Path, tmp_path: Path
) -> None:
    root, port = tmp_path / "jobs", free_port()
    process = start(root, port, tiny_zero123pp)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_for(lambda: ready(client, process), timeout=180)
        ids = []
        for _ in range(3):
            with PHOTO.open("rb") as photo:
                answer = client.post("/api/jobs", files={"photo": ("spot.png", photo, "image/png")})
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
        wait_for(lambda: client.get(f"/api/jobs/{ids[0]}").json()["state"] == "running", timeout=120, period=0.05)
    finally:
        if process.poll() is None:
            interrupt(process)

    states = {job.id: job for job in JobStore(root).jobs()}
    assert states[ids[0]].state in ("done", "failed")  # the job in flight was finished, not dropped
    assert all(job.state != "running" for job in states.values())
    assert states[ids[-1]].state == "queued"  # the last one had not started: it waits for the next start
    for job_id, job in states.items():  # a folder exists only for a finished job, and then it is complete
        assert (root / job_id).exists() == (job.state == "done")
        assert job.state != "done" or is_complete(root / job_id)
    assert not list(root.glob(".*.partial-*")) and not list((root / ".live").glob("*"))

    process = start(root, port, tiny_zero123pp)
    try:
        wait_for(lambda: ready(client, process), timeout=180)
        for job_id in ids:
            job = wait_for(lambda job_id=job_id: _ended(client, job_id), timeout=300)
            assert job["state"] == "done" or job["error"].endswith("."), job
    finally:
        interrupt(process)


def _ended(client: httpx.Client, job_id: str) -> dict | None:
    job = client.get(f"/api/jobs/{job_id}").json()
    return job if job["state"] in ("done", "failed") else None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "{tmp}/no-model"], "does not exist"),
        (["--set", "mesh.bogus=1"], "mesh.bogus"),
        (["--max-upload-mb", "0"], "--max-upload-mb"),
        (["--token", " "], "--token is empty"),
    ],
    ids=["missing-weights", "unknown-config-key", "zero-upload-limit", "empty-token"],
)
def test_serve_refuses_bad_start_up_options_before_loading(
    tiny_zero123pp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], words: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    options = ["--model", str(tiny_zero123pp), "--port", str(free_port()), *[a.format(tmp=tmp_path) for a in args]]
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "jobs"), *options])
    assert result.exit_code == 2 and words in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "jobs").exists()


def test_a_taken_port_is_refused_before_loading(tiny_zero123pp: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["serve", str(tmp_path / "jobs"), "--model", str(tiny_zero123pp), "--port", str(port)]
        )
    assert result.exit_code == 2 and f"Cannot listen on 127.0.0.1:{port}" in result.output, result.output
