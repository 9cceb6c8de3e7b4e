"""``img2mesh batch``: inputs and keys, shards, the manifest, and both runners end to end on the CPU.

The runners run the real pipeline with the tiny random-weight Zero123++ model. Its views are noise, which no
reconstruction can mesh, so the pipeline used here keeps the diffusion call (the model is loaded and run exactly as
in production) and then hands reconstruction the example views grid of a real mesh (``examples/spot_views.png``,
oracle views of the CC0 "spot" model): what is under test is the batch machinery around the stages.

Worker deaths are real process deaths, made with the documented fault-injection plan (``IMG2MESH_BATCH_CRASH`` /
:class:`CrashPlan`). Ray is started once per test session, in-process, with a fake GPU resource.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from stage_settings import TINY

from img2mesh.batch import LocalRunner, Manifest, collect_items, parse_shard, run_job
from img2mesh.batch.inputs import item_for, local_path
from img2mesh.batch.manifest import ItemRecord
from img2mesh.batch.phases import CrashPlan
from img2mesh.batch.shard import Shard
from img2mesh.cli import cli
from img2mesh.config import load_config
from img2mesh.errors import InputError
from img2mesh.pipeline import Img2Mesh
from img2mesh.run_record import RunRecord, is_complete

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_GRID = REPO / "examples" / "spot_views.png"
EXAMPLE_PHOTO = REPO / "examples" / "photos" / "spot.png"


class ExampleViewsPipeline(Img2Mesh):
    """The real pipeline, whose generated (noise) grid is swapped for real oracle views after the diffusion ran."""

    def generate_views(self, cutout, seed=None):
        super().generate_views(cutout, seed)
        return Image.open(EXAMPLE_GRID).convert("RGB")


class OverlapProbePipeline(ExampleViewsPipeline):
    """Notes whether each diffusion ran while an earlier item was being fitted (the local runner's overlap).

    A fit (in the fitting process) leaves a file in ``$BATCH_PROBE``; every diffusion after the first waits for it
    (bounded), so a runner that fits only between diffusions makes the second one wait in vain.
    """

    diffusions: ClassVar[list[bool]] = []
    """Per diffusion: whether a fit had started."""
    loads: ClassVar[list[int]] = []
    """Per load: the number of images the runner announced (what ``multiview.compile: auto`` decides on)."""

    def load(self, images: int = 1):
        self.loads.append(images)
        return super().load(images)

    def generate_views(self, cutout, seed=None):
        started = Path(os.environ["BATCH_PROBE"]) / "fit-started"
        deadline = time.monotonic() + 60
        while self.diffusions and not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.diffusions.append(started.exists())
        return super().generate_views(cutout, seed)

    def fit(self, views):
        (Path(os.environ["BATCH_PROBE"]) / "fit-started").touch()
        return super().fit(views)


class RayLoadProbePipeline(ExampleViewsPipeline):
    """Appends to ``$BATCH_PROBE/loads`` the number of images each model load announced (Ray actors run elsewhere)."""

    def load(self, images: int = 1):
        if self.model is None:  # the first call loads; later ones (per item) return at once
            with open(Path(os.environ["BATCH_PROBE"]) / "loads", "a") as log:
                log.write(f"{images}\n")
        return super().load(images)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("IMG2MESH_BATCH_CRASH", raising=False)


@pytest.fixture
def config(tiny_zero123pp: Path):
    return load_config("cpu", {"multiview.model": str(tiny_zero123pp), **TINY})


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder with a good photo, a photo whose worker will be killed, and a file that is no image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(EXAMPLE_PHOTO, folder / "spot.png")
    shutil.copy(EXAMPLE_PHOTO, folder / "crash.png")
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    return folder


def by_stem(records: dict[str, ItemRecord]) -> dict[str, ItemRecord]:
    return {key.rsplit("-", 1)[0]: record for key, record in records.items()}


# ------------------------------------------------------------------------------------------------ inputs, keys


def test_items_from_folder_glob_list_and_uris(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / sub / "chair.png")
    (tmp_path / "a" / "notes.md").write_text("not a photo")
    listing = tmp_path / "list.txt"
    listing.write_text("# two chairs and a remote one\nb/chair.png\n\nhttps://example.com/img/table.jpg\n")

    from_folder = collect_items([str(tmp_path / "a")])
    assert [Path(i.source).name for i in from_folder] == ["chair.png"]
    from_glob = collect_items([str(tmp_path / "*" / "*.png")])
    from_list = collect_items([str(listing), str(tmp_path / "a" / "chair.png")])
    assert len(from_glob) == 2 and {i.key for i in from_glob} < {i.key for i in from_list}
    # Same stem in two folders: two keys; the same file named twice (and via file://): one item.
    keys = {i.key for i in from_glob}
    assert all(k.startswith("chair-") for k in keys) and len(keys) == 2
    uri = (tmp_path / "a" / "chair.png").as_uri()
    assert item_for(uri) == item_for(str(tmp_path / "a" / "chair.png"))
    assert len(collect_items([uri, str(tmp_path / "a")])) == 1
    remote = next(i for i in from_list if i.is_remote)
    assert remote.key.startswith("table-") and remote.source == "https://example.com/img/table.jpg"
    # Keys are stable: the same inputs give the same keys in a new call.
    assert [i.key for i in collect_items([str(listing)])] == [i.key for i in collect_items([str(listing)])]


def test_bad_inputs_are_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for spec, words in (
        (str(tmp_path / "missing"), "does not exist"),
        (str(tmp_path / "empty"), "holds no photos"),
        (str(tmp_path / "*.png"), "matches no photos"),
    ):
        with pytest.raises(InputError, match=words):
            collect_items([spec])


def test_file_uri_needs_no_fetch_and_dead_link_fails_its_item(tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(photo)
    assert local_path(item_for(photo.as_uri()), tmp_path / "cache") == photo
    dead = item_for("http://127.0.0.1:9/nothing.png")  # the discard port: connection refused at once
    with pytest.raises(InputError, match="Cannot fetch"):
        local_path(dead, tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # no partial download left


# ------------------------------------------------------------------------------------------------------ shards


def test_shards_partition_exactly(tmp_path: Path) -> None:
    for i in range(60):
        (tmp_path / f"p{i:02d}.png").write_bytes(b"")
    items = collect_items([str(tmp_path)])
    for count in (1, 3, 7):
        parts = [Shard(i, count).select(items) for i in range(count)]
        keys = [{item.key for item in part} for part in parts]
        assert sum(len(k) for k in keys) == len(items)  # pairwise disjoint
        assert set().union(*keys) == {item.key for item in items}  # together all
        # Independent of order and of the other inputs: a shard of a subset is the subset of the shard.
        assert [i.key for i in Shard(0, count).select(items[::-1])] == [i.key for i in parts[0]][::-1]
        assert Shard(0, count).select(items[:10]) == [i for i in parts[0] if i in items[:10]]
    assert parse_shard(" 2/4") == Shard(2, 4)
    for bad in ("4/4", "1", "a/b", "0/0"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


# ---------------------------------------------------------------------------------------------------- manifest


def test_manifest_last_record_wins_and_torn_line_is_skipped(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path)
    assert manifest.latest() == {}
    manifest.append(ItemRecord(key="a-1", input="/a.png", status="failed", error="Bad."))
    manifest.append(ItemRecord(key="b-2", input="/b.png", status="done"))
    manifest.append(ItemRecord(key="a-1", input="/a.png", status="done", timings={"fit": 1.5}))
    with manifest.path.open("a") as f:
        f.write('{"key": "c-3", "inp')  # a writer killed mid-line
    latest = manifest.latest()
    assert set(latest) == {"a-1", "b-2"}
    assert latest["a-1"].status == "done" and latest["a-1"].timings == {"fit": 1.5}


def test_crash_plan_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CrashPlan.from_env() == CrashPlan()
    monkeypatch.setenv("IMG2MESH_BATCH_CRASH", "write:chair, views:table-1234abcd")
    assert CrashPlan.from_env().points == {("write", "chair"), ("views", "table-1234abcd")}
    monkeypatch.setenv("IMG2MESH_BATCH_CRASH", "bake:chair")
    with pytest.raises(InputError, match="PHASE:NAME"):
        CrashPlan.from_env()


# --------------------------------------------------------------------------------------------------------- CLI


def test_cli_summary_exit_status_and_retry_failed(tiny_zero123pp: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"nope")
    blank = np.zeros((64, 64, 4), np.uint8)  # fully transparent: no object to cut out
    Image.fromarray(blank, "RGBA").save(folder / "blank.png")
    out = tmp_path / "out"
    args = ["batch", str(folder), "-o", str(out), "--config", "cpu", "--model", str(tiny_zero123pp), "--steps", "1"]
    args += ["--remove-bg", "none"]  # with rembg's model missing offline the job would stop before it starts

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "failed                    2" in result.output and "broken-" in result.output, result.output
    lines = Manifest(out).path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "failed" for line in lines)

    rerun = CliRunner().invoke(cli, args)
    assert rerun.exit_code == 1 and "failed earlier (skipped)  2" in rerun.output, rerun.output
    assert len(Manifest(out).path.read_text().splitlines()) == 2  # nothing was tried again

    retry = CliRunner().invoke(cli, [*args, "--retry-failed", "--shard", "0/1"])
    assert retry.exit_code == 1 and len(Manifest(out).path.read_text().splitlines()) == 4, retry.output

    bad = CliRunner().invoke(cli, ["batch", str(folder), "-o", str(out), "--ray", str(folder)])
    assert bad.exit_code == 2 and "--ray" in bad.output and "is not an address" in bad.output, bad.output


# ----------------------------------------------------------------------------------------------------- runners


def check_job(out: Path, latest: dict[str, ItemRecord], lost: dict[str, str]) -> None:
    """The good item is complete; the unreadable one failed with its sentence; each crashed one (``lost``: stem →
    words of its error) is reported lost."""
    records = by_stem(latest)
    assert set(records) == {"spot", "broken", *lost}
    spot = records["spot"]
    assert spot.status == "done" and is_complete(out / spot.key)
    run = RunRecord.load(out / spot.key)
    assert set(run.timings) >= {"prepare_input", "generate_views", "pose_views", "fit", "finish", "export"}
    # The layout of `img2mesh run`, and the manifest lists it.
    layout = ["input.png", "views.png", *(f"views/{i:02d}.png" for i in range(6)), "transforms.json", "mesh.glb"]
    assert {f"{spot.key}/{name}" for name in [*layout, "preview.png", "run.json"]} <= set(spot.outputs)
    assert set(run.outputs) == {"input", "views_grid", "views", "dataset", "mesh", "preview"}
    assert all((out / name).is_file() for name in spot.outputs)
    assert records["broken"].status == "failed" and "not a readable image" in records["broken"].error
    assert records["broken"].traceback is None  # bad input, not a bug
    for stem, words in lost.items():
        assert records[stem].status == "failed" and words in records[stem].error, records[stem].error
    for failed in ("broken", *lost):
        assert not (out / records[failed].key).exists()
    # Nothing half-written beside the finished folder: only items, the manifest and the input cache.
    assert {p.name for p in out.iterdir()} <= {spot.key, "manifest.jsonl", ".inputs"}


def test_local_runner_reports_failures_and_rerun_does_nothing(
    config, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copy(EXAMPLE_PHOTO, photos / "fitcrash.png")
    monkeypatch.setenv("BATCH_PROBE", str(tmp_path))
    crash = CrashPlan(frozenset({("write", "crash"), ("fit", "fitcrash")}))
    runner = LocalRunner(config, out, cpu_workers=1, max_retries=1, crash=crash, pipeline=OverlapProbePipeline)
    result = run_job(collect_items([str(photos)]), out, runner, progress=False)
    assert not result.ok and result.done == 1 and len(result.records) == 4
    lost = {"crash": "worker process died 2 time(s)", "fitcrash": "fitting process died 2 time(s)"}
    check_job(out, Manifest(out).latest(), lost)
    # Three items reached the GPU (crash, fitcrash, spot); from the second on, each diffusion ran beside a fit.
    assert OverlapProbePipeline.diffusions == [False, True, True]
    assert OverlapProbePipeline.loads[0] == 4  # the runner announced its whole batch before the model loaded

    # A rerun does nothing: no item processed, no manifest line, the finished folder untouched.
    lines = Manifest(out).path.read_text()
    spot_key = next(r.key for r in result.records if r.status == "done")
    stamp = (out / spot_key / "run.json").stat().st_mtime_ns
    again = run_job(collect_items([str(photos)]), out, runner, progress=False)
    assert again.records == [] and len(again.plan.already_done) == 1 and len(again.plan.failed_before) == 3
    assert Manifest(out).path.read_text() == lines
    assert (out / spot_key / "run.json").stat().st_mtime_ns == stamp


class ArrivalProbePipeline(ExampleViewsPipeline):
    """Says when the first diffusion started (the runner's diffusion runs in this process)."""

    diffusing = threading.Event()

    def generate_views(self, cutout, seed=None):
        self.diffusing.set()
        return super().generate_views(cutout, seed)


class ArrivingFeed:
    """Two photos sent together, as a server receives them: one request after the other, so only the first is at
    hand when the runner takes it, the second once the first is diffusing; then nothing more."""

    def __init__(self, items: list) -> None:
        self.items = list(items)

    def take(self, wait: bool):
        if not self.items and wait:
            raise StopIteration  # (a server would wait for the next photo)
        if not self.items or (len(self.items) == 1 and not ArrivalProbePipeline.diffusing.is_set()):
            return None
        return self.items.pop(0)


def test_an_item_is_alone_only_if_nothing_came_while_it_diffused(config, tmp_path: Path) -> None:
    # Decided when the item was read, the first photo would be alone: fitted and written by itself before the
    # second one's diffusion starts. Decided once its views exist, it goes the batch way (fitted beside the next
    # diffusion, written by a CPU worker), and the second, with nothing behind it, the lone way (fitted and written
    # in the fitting process).
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(EXAMPLE_PHOTO, folder / name)
    items = collect_items([str(folder)])
    ArrivalProbePipeline.diffusing.clear()
    runner = LocalRunner(config, tmp_path / "out", cpu_workers=1, pipeline=ArrivalProbePipeline)
    records: list[ItemRecord] = []
    runner.process(ArrivingFeed(items), records.append, images=2)
    first, second = sorted(records, key=lambda r: r.key)
    assert first.status == second.status == "done", (first.error, second.error)
    assert first.worker != second.worker  # a CPU worker, then the fitting process


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One in-process Ray for this module (the only one using Ray): 2 CPUs, a fake GPU, a small object store.

    Shut down when the module ends, so no Ray process or message thread outlives it into other tests' output.
    """
    import ray
    from ray import cloudpickle

    # The test pipeline class lives in this test module, which Ray workers cannot import: ship it by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        num_gpus=1,
        object_store_memory=150 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "BATCH_PROBE": str(tmp_path_factory.mktemp("ray-probe"))}},
    )
    yield ray
    ray.shutdown()


def test_ray_runner_reports_failures_and_rerun_does_nothing(ray_session, config, photos: Path, tmp_path: Path) -> None:
    from img2mesh.batch.ray_runner import RayRunner

    out = tmp_path / "out"
    crash = CrashPlan(frozenset({("views", "crash")}))  # kills the GPU actor holding the model, twice
    runner = RayRunner(config, out, max_retries=1, crash=crash, pipeline=RayLoadProbePipeline)
    result = run_job(collect_items([str(photos)]), out, runner, progress=False)
    assert not result.ok and result.done == 1 and len(result.records) == 3
    # Every (re)started model actor was told its share: 3 photos, one actor on the one (fake) GPU.
    probe = Path(ray_session.get(ray_session.remote(lambda: os.environ["BATCH_PROBE"]).remote()))
    assert set((probe / "loads").read_text().split()) == {"3"}
    check_job(out, Manifest(out).latest(), {"crash": "never came back from Ray after 2 attempt(s)"})
    again = run_job(collect_items([str(photos)]), out, runner, progress=False)
    assert again.records == [] and len(again.plan.already_done) == 1

    # Weights are resolved on every node before any actor starts: missing ones stop the job with their sentence.
    missing = load_config("cpu", {"multiview.model": str(tmp_path / "no-model")})
    with pytest.raises(InputError, match="does not exist"):
        RayRunner(missing, tmp_path / "out2").run(collect_items([str(photos)]), lambda record: None)
    assert not (tmp_path / "out2").exists()
