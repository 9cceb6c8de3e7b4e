"""The server's one job runner: the batch runner's machinery fed from a queue, the model loaded and warmed once.

:class:`JobWorker` runs :meth:`img2mesh.batch.local_runner.LocalRunner.process` in a thread of its own, feeding it
the queued jobs (:meth:`JobWorker.take`), so a server job goes exactly the way of a batch item: the photo read and
cut out ahead, the Zero123++ views in this process, the fit in the GPU worker process beside the next job's
diffusion, the CPU half in worker processes, and the folder in ``img2mesh run``'s layout written under a temporary
name and renamed when complete. Before the first job it runs one warm-up job on a drawn photo, so the fast path's
graphs (and compiled blocks), the fitting process's graphs and the workers' imports are ready when the first real
photo comes.

While a job runs, its cut-out and grid are written to ``.live/<id>/`` as soon as they exist (the page shows them);
the job's folder itself appears only when complete. Progress within a stage is estimated from the seconds the
same stage took in the last finished job.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from img2mesh.batch.inputs import BatchItem
from img2mesh.batch.manifest import ItemRecord
from img2mesh.config import Img2MeshConfig
from img2mesh.errors import InputError
from img2mesh.pipeline import Img2Mesh
from img2mesh.run_record import now
from img2mesh.serve.options import job_config
from img2mesh.serve.store import Job, JobStore

log = logging.getLogger(__name__)

#: Stages of a server job in order, as its ``stage`` field names them; "write" covers the folder's
#: mesh (run.json's "finish"), export and preview.
STAGES = ("prepare_input", "generate_views", "pose_views", "fit", "write")

#: Seconds per stage assumed for progress until a first job has finished (GPU defaults, measured magnitudes).
FIRST_GUESS = {"prepare_input": 0.3, "generate_views": 3.0, "pose_views": 0.3, "fit": 2.0, "write": 1.5}

#: Folder (in the server's folder) of the files of running jobs: cut-out and grid before the job is complete.
LIVE_DIR = ".live"

#: Folder (in the server's folder) of the uploaded photos, ``<id>.<suffix>``.
UPLOADS_DIR = "uploads"

#: Key of the warm-up job (hidden, never a job id: those are hex).
WARM_UP_KEY = ".warm-up"


class JobWorker:
    """Runs queued jobs of ``store`` into ``root`` in a background thread; see the module docstring."""

    def __init__(
        self,
        root: Path,
        store: JobStore,
        config: Img2MeshConfig,
        config_source: str | Path | None,
        overrides: dict[str, Any],
        pipeline: type[Img2Mesh] = Img2Mesh,
        cpu_workers: int | None = None,
        warm_up: bool = True,
    ) -> None:
        from img2mesh.batch.local_runner import LocalRunner

        self.root = root
        self.store = store
        self.config_source = config_source
        self.overrides = overrides
        self.warm_up = warm_up
        self.runner = LocalRunner(config, root, cpu_workers=cpu_workers, pipeline=pipeline, on_stage=self._on_stage)
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.stop = threading.Event()
        self.ready = threading.Event()
        """Set once the model is loaded and the warm-up job is through (or loading failed: see ``error``)."""
        self.error: str | None = None
        """Why the model could not be loaded; the server then takes no jobs."""
        self.expected = dict(FIRST_GUESS)
        self._stage_started: dict[str, float] = {}
        self._shown: dict[str, float] = {}
        self._files = ThreadPoolExecutor(1, thread_name_prefix="img2mesh-live")  # off the diffusion thread
        self._warm_up_next = warm_up
        self._thread = threading.Thread(target=self._run, name="img2mesh-jobs", daemon=True)

    @property
    def config(self) -> Img2MeshConfig:
        """The server's config (after the model loaded: with the pose table of the weights)."""
        return self.runner.config

    # ---------------------------------------------------------------------------------------------- control

    def start(self) -> None:
        """Queue the jobs a previous server left queued, then start loading and running."""
        for job_id in self.store.queued_ids():
            self.queue.put(job_id)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        self.queue.put(job_id)

    def request_stop(self) -> None:
        """Take no more jobs; those already diffusing, fitting or writing are completed."""
        self.stop.set()
        self.queue.put(None)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._files.shutdown(wait=True)

    def live_folder(self, job_id: str) -> Path:
        return self.root / LIVE_DIR / job_id

    # --------------------------------------------------------------------------------------------- progress

    def progress(self, job: Job) -> float:
        """Share of the job done, 0 to 1: finished stages plus the running one's elapsed share of its estimate."""
        if job.state in ("done", "failed"):
            return 1.0
        if job.state == "queued" or job.stage not in STAGES:
            return 0.0
        index = STAGES.index(job.stage)
        total = sum(self.expected.values())
        elapsed = time.monotonic() - self._stage_started.get(job.id, time.monotonic())
        current = min(elapsed, 0.95 * self.expected[job.stage])
        share = (sum(self.expected[s] for s in STAGES[:index]) + current) / total
        # The estimates change when another job finishes; what a client saw never goes back.
        share = self._shown[job.id] = max(share, self._shown.get(job.id, 0.0))
        return share

    # ------------------------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        from img2mesh.zero123pp.fast_step import BLOCKS_FROM_IMAGES

        try:
            # A server turns many photos: tell the model as many as repay the compiled blocks, even from cold.
            self.runner.process(self, self._report, images=BLOCKS_FROM_IMAGES["cold"], stop=self.stop)
        except InputError as exc:
            self.error = str(exc)
            log.error("The model could not be loaded: %s", exc)
        except Exception as exc:  # a crash of the diffusion itself: the server stays up and says why
            self.error = f"The job runner stopped: unexpected {type(exc).__name__}: {exc}"
            log.exception("the job runner stopped")
        finally:
            self.ready.set()
            # Jobs taken but never reported (left when stopping) run again at the next start.
            requeued = self.store.requeue_running()
            if requeued:
                log.warning("%d job(s) stay queued for the next start.", requeued)

    def take(self, wait: bool) -> BatchItem | None:
        """The runner's feed (:class:`img2mesh.batch.local_runner.Feed`): the warm-up job first, alone and through to
        its end; then the queued jobs in order; None when none is at hand and not ``wait``; StopIteration once
        stopping."""
        if self._warm_up_next:
            self._warm_up_next = False
            return self._warm_up_item()
        if not self.warm_up:
            self.ready.set()  # the runner asks once the model is loaded
        elif not wait and not self.ready.is_set():
            return None  # the warm-up job goes alone, through to its end, before the first real one
        while not self.stop.is_set():
            try:
                job_id = self.queue.get(block=wait)
            except queue.Empty:
                return None
            if job_id is None:
                break
            item = self._take(job_id)
            if item is not None:
                return item
        raise StopIteration

    def _take(self, job_id: str) -> BatchItem | None:
        """The batch item of a queued job, marked running; None when it was deleted or cannot run."""
        job = self.store.get(job_id)
        if job is None or job.state != "queued":
            return None
        try:
            config = job_config(self.config, self.config_source, self.overrides, job.options)
        except InputError as exc:  # the server's config file changed since the job was queued
            self.store.update(job_id, state="failed", error=str(exc), finished=now())
            return None
        self._stage_started[job_id] = time.monotonic()
        self.store.update(job_id, state="running", stage="prepare_input", started=now())
        photo = next((self.root / UPLOADS_DIR).glob(f"{job_id}.*"), None)
        if photo is None:
            self.store.update(job_id, state="failed", error="The job's uploaded photo is gone; submit it again.")
            return None
        return BatchItem(key=job_id, source=str(photo), config=config)

    def _warm_up_item(self) -> BatchItem:
        from img2mesh.serve.warm_up import warm_up_photo

        photo = self.root / LIVE_DIR / "warm-up.png"
        photo.parent.mkdir(parents=True, exist_ok=True)
        warm_up_photo().save(photo)
        return BatchItem(key=WARM_UP_KEY, source=str(photo))

    # ---------------------------------------------------------------------------------------- runner hooks

    def _on_stage(self, item: BatchItem, stage: str, made: Any) -> None:
        if item.key == WARM_UP_KEY:
            return
        self._stage_started[item.key] = time.monotonic()
        self.store.update(item.key, stage=stage)
        if stage == "pose_views" and made is not None:
            self._files.submit(self._save_live, item.key, made.cutout, made.grid)

    def _save_live(self, job_id: str, cutout, grid) -> None:
        folder = self.live_folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in (("input.png", cutout), ("views.png", grid)):
            partial = folder / f".{name}"
            image.save(partial, format="PNG")
            partial.replace(folder / name)  # a reader never gets half a PNG

    def _report(self, record: ItemRecord) -> None:
        if record.key == WARM_UP_KEY:
            shutil.rmtree(self.root / WARM_UP_KEY, ignore_errors=True)
            if record.status == "failed":
                log.warning("warm-up job failed (the first real job pays the warm-up): %s", record.error)
            log.info("warmed up: %s", ", ".join(f"{k} {v:.1f} s" for k, v in record.timings.items()))
            self.ready.set()
            return
        self._stage_started.pop(record.key, None)
        self._shown.pop(record.key, None)
        self.store.update(
            record.key,
            state=record.status,
            stage=None,
            timings=record.timings,
            error=record.error,
            finished=record.finished or now(),
        )
        if record.status == "done":
            timings = record.timings
            write = sum(timings.get(s, 0.0) for s in ("finish", "export", "preview"))
            self.expected.update({s: timings[s] for s in STAGES[:-1] if s in timings}, write=write or 1.0)
        self._files.submit(shutil.rmtree, self.live_folder(record.key), True)


def clean_leftovers(root: Path) -> None:
    """Remove what a stopped server left half-written: live files, temporary and moved-aside job folders, uploads."""
    shutil.rmtree(root / LIVE_DIR, ignore_errors=True)
    shutil.rmtree(root / WARM_UP_KEY, ignore_errors=True)
    for path in root.glob(".*.partial-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".*.old-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in (root / UPLOADS_DIR).glob(".*.partial"):  # an upload cut off while it was written
        path.unlink(missing_ok=True)
