"""The default batch runner: one machine, the model loaded once, the GPU never waiting for the CPU's half.

Per item, the GPU phases (Zero123++ views, then field fitting) take seconds, and the CPU phase (marching cubes, UV
unwrap, texture baking, export, preview) takes about as long again. Run in sequence, the GPU would sit idle for the
whole CPU phase. Here the main thread runs the diffusion, item after item, with the model loaded once; photos are
read and cut out ahead of it by a helper thread; each grid is posed (masks, cameras) by a second thread, then fitted
in a GPU worker process while the main thread already runs the next item's diffusion. Neither GPU phase keeps the
card busy alone (host work between the diffusion's steps, the fit's set-up and read-back), so side by side they fill
each other's gaps. Each fitted item goes on to a small
pool of CPU worker processes that mesh, texture and write it while the GPU goes on. Every hand-off is bounded (one item
being fitted, at most as many fitted items waiting as there are CPU workers), so a slow stage holds the GPU back
instead of filling memory.

The same loop serves a stream of items that arrive over time (``img2mesh serve``): :meth:`LocalRunner.process`
takes a :class:`Feed`, which says without waiting whether an item is at hand, and is asked to wait for one only
when nothing is in flight, so the last item never waits for a next one. Whether an item has another behind it is
asked once its views exist, just before its fit starts (not when it was read: photos sent together arrive one
request after another, and the first would otherwise look alone). An item alone, with nothing behind it, is fitted
and written in one go in the fitting process, its texture baked on the fitting device: no hand-over of its fields,
and the GPU has nothing else to do; then the runner completes and reports everything in flight and waits for the
next. ``on_stage`` hears when an item enters each phase (with the cut-out and grid once they exist), for live
progress.

Why the fit runs in a process of its own rather than a thread: each fitting stage captures a CUDA graph, and a
capture in one thread forbids memory allocation in every other thread of the process (CUDA's default capture mode),
which the diffusion beside it does all the time. A second process has its own CUDA context, so nothing it captures
can disturb the diffusion; the GPU interleaves the two contexts' work. It also makes the fit crash-safe like the CPU
phase: every worker process (the fitting one and each CPU worker) holds one item at a time, so when it dies
(segfault, the out-of-memory killer) the runner knows which item it held: the worker is replaced, the item retried up
to ``max_retries`` times, then reported as failed, and the others go on. The diffusion runs in this process (one
model, one CUDA context); a crash there ends the job, and a rerun resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from img2mesh.batch.inputs import BatchItem
from img2mesh.batch.manifest import ItemRecord
from img2mesh.batch.phases import (
    CrashPlan,
    FittedItem,
    ItemFailed,
    PosedItem,
    failure_record,
    fit_item,
    lost_record,
    make_grid,
    pose_item,
    prepare_cutout,
    write_item,
)
from img2mesh.config import Img2MeshConfig
from img2mesh.pipeline import Img2Mesh

#: Called with each item's record as soon as it is known.
Report = Callable[[ItemRecord], None]

#: Called with an item, the stage it enters ("generate_views", "pose_views", "fit", "write") and, from
#: "pose_views" on, its :class:`PosedItem` (cut-out and grid); from the runner's threads.
OnStage = Callable[[BatchItem, str, "PosedItem | None"], None]

#: Photos read and cut out ahead of the GPU.
PREFETCH = 2

#: Torch CPU threads of the fitting process when it fits on a GPU: the cores are the CPU workers'.
GPU_FIT_THREADS = 2


class Feed(Protocol):
    """Items that arrive over time (a server's queue), for :meth:`LocalRunner.process`."""

    def take(self, wait: bool) -> BatchItem | None:
        """The next item; without ``wait``, None when none is at hand now (``wait``: block until one comes).
        Raises StopIteration when there will be no more (the runner then completes what is in flight)."""
        ...


class _Listed:
    """A fixed list of items as a :class:`Feed`."""

    def __init__(self, items: Iterable[BatchItem]) -> None:
        self.items = iter(items)

    def take(self, wait: bool) -> BatchItem:
        return next(self.items)


class _ReadAhead:
    """The feed's next items, each with its photo being read and cut out (up to ``PREFETCH`` ahead of the one that
    is diffusing). Asks the feed to wait only through :meth:`pop` with ``wait``."""

    def __init__(self, feed: Feed, read: Callable[[BatchItem], Future]) -> None:
        self.feed = feed
        self.read = read
        self.queue: deque[tuple[BatchItem, Future]] = deque()
        self.ended = False

    def _top_up(self, wait: bool) -> None:
        while not self.ended and len(self.queue) <= PREFETCH:
            try:
                item = self.feed.take(wait and not self.queue)
            except StopIteration:
                self.ended = True
                return
            if item is None:
                return
            self.queue.append((item, self.read(item)))

    def pop(self, wait: bool) -> tuple[BatchItem, Future] | None:
        """The next item and its cut-out's future; None when none is at hand (or, with ``wait``, the feed ended)."""
        self._top_up(wait)
        return self.queue.popleft() if self.queue else None

    def behind(self) -> Literal["item", "none", "end"]:
        """What follows now: an item at hand, none at hand (a gap in a stream), or the end of the feed."""
        self._top_up(False)
        return "item" if self.queue else "end" if self.ended else "none"


def default_cpu_workers() -> int:
    """CPU worker processes: a quarter of the cores, at least 1 and at most 4 (more rarely pays: the GPU is slower)."""
    return max(1, min(4, (os.cpu_count() or 2) // 4))


class LocalRunner:
    """Runs items on this machine with the model loaded once in this process; see the module docstring."""

    name = "local"

    def __init__(
        self,
        config: Img2MeshConfig,
        out_root: Path,
        cpu_workers: int | None = None,
        max_retries: int = 1,
        crash: CrashPlan | None = None,
        pipeline: type[Img2Mesh] = Img2Mesh,
        on_stage: OnStage | None = None,
    ) -> None:
        self.config = config
        self.out_root = Path(out_root)
        self.cpu_workers = cpu_workers or default_cpu_workers()
        self.max_retries = max_retries
        self.crash = crash or CrashPlan()
        self.pipeline = pipeline
        self.on_stage = on_stage or (lambda item, stage, made: None)
        self.cache = self.out_root / ".inputs"

    def run(self, items: list[BatchItem], report: Report) -> None:
        """Process ``items``, calling ``report`` once per item (done or failed)."""
        if items:
            self.process(items, report, images=len(items))

    def process(
        self,
        feed: Iterable[BatchItem] | Feed,
        report: Report,
        images: int,
        stop: threading.Event | None = None,
    ) -> None:
        """Process the items of ``feed`` (a list, or a :class:`Feed` of items that arrive over time) as they come.

        ``images`` is how many items the model should expect (what ``multiview.compile: auto`` decides on). Once
        ``stop`` is set, items not yet diffusing are left unreported, for the caller to keep for later; those in
        flight are completed.
        """
        pipe = self.pipeline(self.config, progress=False).load(images=images)
        fit_process: FitProcess | None = None
        writers: WritePool | None = None
        fitting: tuple[BatchItem, Future] | None = None  # the previous item, posed then fitted beside this diffusion
        alone = False  # whether that item has nothing behind it (then it is seen through before anything else)
        source = feed if hasattr(feed, "take") else _Listed(feed)
        try:
            with (
                ThreadPoolExecutor(1, thread_name_prefix="img2mesh-read") as reader,
                ThreadPoolExecutor(1, thread_name_prefix="img2mesh-pose") as poser,
                ThreadPoolExecutor(1, thread_name_prefix="img2mesh-fit") as fitter,
            ):
                ahead = _ReadAhead(source, lambda item: reader.submit(_timed_cutout, pipe, item, self.cache))
                while stop is None or not stop.is_set():
                    entry = None if alone else ahead.pop(wait=False)
                    if entry is None:  # nothing at hand: complete what is in flight, then wait for the next
                        if fitting is not None:
                            self._hand_on(fitting, writers, report)
                            fitting, alone = None, False
                        if writers is not None:
                            writers.drain()
                        if stop is not None and stop.is_set():
                            break
                        entry = ahead.pop(wait=True)
                        if entry is None:  # the feed ended
                            break
                        if stop is not None and stop.is_set():
                            break
                    item, cutout = entry
                    try:
                        image, seconds = cutout.result()
                    except Exception as exc:
                        report(failure_record(item, exc, None, {}))
                        continue
                    # Workers start with the first readable photo, so they warm up while the GPU makes its views.
                    fit_process = fit_process or FitProcess(self, on_gpu=pipe.device.type == "cuda")
                    writers = writers or WritePool(self, report)
                    try:
                        self.on_stage(item, "generate_views", None)
                        made = make_grid(pipe, item, self.cache, self.crash, cutout=image)
                    except ItemFailed as failed:
                        report(failed.record)
                        continue
                    made.timings = {"prepare_input": seconds, **made.timings}
                    self.on_stage(item, "pose_views", made)
                    posed = poser.submit(pose_item, pipe, made)
                    if fitting is not None:
                        self._hand_on(fitting, writers, report)
                    alone = ahead.behind() == "none"  # asked now that its views exist: what came meanwhile counts
                    fitting = (item, fitter.submit(_fit_posed, fit_process, posed, self.on_stage, alone))
                if fitting is not None:
                    assert writers is not None
                    self._hand_on(fitting, writers, report)
            if writers is not None:
                writers.drain()
        finally:
            if fit_process is not None:
                fit_process.shutdown()
            if writers is not None:
                writers.shutdown()

    def _hand_on(self, fitting: tuple[BatchItem, Future], writers: WritePool, report: Report) -> None:
        """Wait for an item's fit and hand it to the CPU workers (or report why it failed, or its record when the
        fitting process wrote it too)."""
        item, future = fitting
        try:
            fitted = future.result()
        except ItemFailed as failed:
            report(failed.record)
        else:
            if isinstance(fitted, ItemRecord):
                report(fitted)
                writers.collect(block=False)
                return
            self.on_stage(item, "write", fitted.posed)
            writers.submit(fitted)
        writers.collect(block=False)


def _fit_posed(fit_process: FitProcess, posed: Future, on_stage: OnStage, alone: bool) -> FittedItem | ItemRecord:
    """The fit thread's task: wait for the item's posed views, then have them fitted (and written too when the item
    is alone). Raises :class:`ItemFailed`."""
    made = posed.result()
    on_stage(made.item, "fit", made)
    return fit_process.fit(made, write=alone)


class FitProcess:
    """The GPU worker process that fits posed views, one item at a time; replaced when it dies."""

    def __init__(self, runner: LocalRunner, on_gpu: bool) -> None:
        self.runner = runner
        self.threads = GPU_FIT_THREADS if on_gpu else None  # on the CPU, fitting is the work: torch's default
        self.executor = self._new_executor()
        self.executor.submit(_warm_up_gpu)  # while the main process loads the model

    def _new_executor(self) -> ProcessPoolExecutor:
        runner = self.runner
        return ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a process that holds a CUDA context
            initializer=_init_worker,
            initargs=(runner.pipeline, runner.config, self.threads),
        )

    def fit(self, made: PosedItem, write: bool = False) -> FittedItem | ItemRecord:
        """Fit ``made`` in the worker process; with ``write``, also write its folder there (baked on the fitting
        device) and return its record. Raises :class:`ItemFailed` (also when the worker died too often)."""
        attempts = self.runner.max_retries + 1
        runner = self.runner
        for _ in range(attempts):
            try:
                if write:
                    return self.executor.submit(_fit_and_write_in_worker, made, runner.out_root, runner.crash).result()
                return self.executor.submit(_fit_in_worker, made, runner.crash).result()
            except BrokenProcessPool:  # it died holding this item: replace it, then retry the item or give up on it
                self.executor.shutdown(wait=False, cancel_futures=True)
                self.executor = self._new_executor()
        error = (
            f"The fitting process died {attempts} time(s) while fitting this item (crash or out of memory); "
            "rerun with --retry-failed once the cause is fixed."
        )
        raise ItemFailed(lost_record(made.item, error))

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _timed_cutout(pipe: Img2Mesh, item: BatchItem, cache: Path):
    start = time.perf_counter()
    image = prepare_cutout(pipe, item, cache)
    return image, time.perf_counter() - start


@dataclass
class _Slot:
    """One CPU worker process and the item it holds."""

    executor: ProcessPoolExecutor
    job: tuple[Future, FittedItem, int] | None = None
    """The running call, its item and how many times the item was started."""


class WritePool:
    """CPU worker processes writing fitted items, one item each at a time, with bounded waiting and retries."""

    def __init__(self, runner: LocalRunner, report: Report) -> None:
        self.runner = runner
        self.report = report
        self.context = multiprocessing.get_context("spawn")  # never fork a process that holds a CUDA context
        self.slots = [_Slot(self._new_executor()) for _ in range(runner.cpu_workers)]
        self.waiting: deque[tuple[FittedItem, int]] = deque()
        for slot in self.slots:  # start the workers (imports take seconds) while the GPU makes the first views
            slot.executor.submit(_warm_up)

    def _new_executor(self) -> ProcessPoolExecutor:
        runner = self.runner
        # Three cores stay free for what feeds the GPU: the diffusion thread, the fitting process and the posing
        # thread (a starved launcher idles the GPU).
        threads = max(1, ((os.cpu_count() or 2) - 3) // runner.cpu_workers)
        return ProcessPoolExecutor(
            1,
            mp_context=self.context,
            initializer=_init_worker,
            initargs=(runner.pipeline, runner.config, threads),
        )

    def submit(self, fitted: FittedItem) -> None:
        """Queue a fitted item; blocks while as many items wait as there are workers."""
        self.waiting.append((fitted, 1))
        self._dispatch()
        while len(self.waiting) >= len(self.slots):
            self.collect(block=True)

    def collect(self, block: bool) -> None:
        """Report written items (waiting for at least one when ``block``), then start waiting ones."""
        running = {slot.job[0]: slot for slot in self.slots if slot.job is not None}
        if not running:
            return
        done, _ = wait(running, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            self._report_job(running[future])
        self._dispatch()

    def drain(self) -> None:
        """Wait until every item is reported."""
        while self.waiting or any(slot.job is not None for slot in self.slots):
            self.collect(block=True)

    def shutdown(self) -> None:
        for slot in self.slots:
            slot.executor.shutdown(wait=True, cancel_futures=True)

    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.job is None and self.waiting:
                fitted, attempt = self.waiting.popleft()
                future = slot.executor.submit(_write_in_worker, fitted, self.runner.out_root, self.runner.crash)
                slot.job = (future, fitted, attempt)

    def _report_job(self, slot: _Slot) -> None:
        assert slot.job is not None
        future, fitted, attempt = slot.job
        slot.job = None
        try:
            self.report(future.result())
        except BrokenProcessPool:
            # The worker died holding this item: replace it, then retry the item or give up on it.
            slot.executor.shutdown(wait=False, cancel_futures=True)
            slot.executor = self._new_executor()
            if attempt <= self.runner.max_retries:
                self.waiting.appendleft((fitted, attempt + 1))
            else:
                error = (
                    f"The worker process died {attempt} time(s) while writing this item (crash or out of memory); "
                    "rerun with --retry-failed once the cause is fixed."
                )
                self.report(lost_record(fitted.posed.item, error))
        except Exception as exc:  # the call itself failed (e.g. the item could not be pickled)
            made = fitted.posed
            self.report(failure_record(made.item, exc, made.started, made.timings))


_WORKER_PIPE: Img2Mesh | None = None


def _init_worker(pipeline: type[Img2Mesh], config: Img2MeshConfig, threads: int | None) -> None:
    """Set up a worker process: an unloaded pipeline (fitting and writing need no model), its share of the cores."""
    global _WORKER_PIPE
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    _WORKER_PIPE = pipeline(config, progress=False)


def _warm_up() -> None:
    import recon.reconstruct  # noqa: F401  (the heavy imports of the worker's phase, done before the first item)


def _warm_up_gpu() -> None:
    """The imports and the CUDA context of the fitting process, before the first item."""
    import torch

    _warm_up()
    if torch.cuda.is_available():
        torch.cuda.init()


def _fit_in_worker(made: PosedItem, crash: CrashPlan) -> FittedItem:
    assert _WORKER_PIPE is not None
    try:
        return fit_item(_WORKER_PIPE, made, crash)
    finally:
        _release_memory()


def _fit_and_write_in_worker(made: PosedItem, out_root: Path, crash: CrashPlan) -> ItemRecord:
    assert _WORKER_PIPE is not None
    try:
        fitted = fit_item(_WORKER_PIPE, made, crash)
        return write_item(_WORKER_PIPE, fitted, out_root, crash, bake_device=None)
    finally:
        _release_memory()


def _write_in_worker(fitted: FittedItem, out_root: Path, crash: CrashPlan) -> ItemRecord:
    assert _WORKER_PIPE is not None
    try:
        return write_item(_WORKER_PIPE, fitted, out_root, crash)
    finally:
        _release_memory()


def _release_memory() -> None:
    """What a long-lived worker gives back after each item, so that a server's memory stays flat over many jobs.

    The fit captures a CUDA graph per stage, each in a private pool of the caching allocator; once the graph is gone
    its pool's blocks stay reserved (reusable by no other allocation) until ``empty_cache``, since an 80-140 GB card
    never runs out to force it: one item's worth of dead pools per item. ``malloc_trim`` hands the heap that an
    item's arrays fragmented back to the system (glibc only; elsewhere nothing happens).
    """
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
