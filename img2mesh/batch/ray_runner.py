"""``img2mesh batch --ray``: the same phases spread over every GPU of a machine or a cluster by Ray Data.

Scheduling, back-pressure, actor placement and restarts are Ray's; this module only describes the job as a Ray
Data pipeline with one block per item:

    items ─▶ views actors (Zero123++ loaded once per actor, GPU) ─▶ fit actors (GPU) ─▶ write tasks (CPU) ─▶ driver

- Each GPU pool has one actor per GPU of the cluster, each asking for half a GPU, so on every card a diffusion
  actor and a fitting actor can run side by side (the phases take similar time; see benchmarks/RESULTS.md).
- Bad input is caught inside the phase and travels on as a "failed" row; the item's record reaches the manifest
  like any other and the job goes on.
- A worker that dies (segfault, out-of-memory killer) is restarted by Ray — an actor as often as needed, since each
  death costs one item one of its bounded attempts — and the item it held is retried ``max_retries`` times. After
  that its block is dropped (``max_errored_blocks`` is unlimited), and the driver reports every item that never
  came back as lost. Ray's own defaults retry forever; bounding the attempts is what keeps a poisoned item from
  hanging the job.
- Weights are resolved once per node by a small task pinned to each node, before any actor starts, so a cluster
  with a shared Hugging Face cache downloads them once and no two actors race to fetch them.
- Finished folders are written by the CPU tasks straight into the output folder, which must therefore be visible
  to every node at the same path (a shared file system), as must the input photos (or use http(s) URIs).
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from img2mesh.batch.inputs import BatchItem
from img2mesh.batch.local_runner import Report
from img2mesh.batch.manifest import ItemRecord
from img2mesh.batch.phases import CrashPlan, ItemFailed, fit_item, lost_record, make_views, write_item
from img2mesh.config import Img2MeshConfig
from img2mesh.errors import InputError
from img2mesh.pipeline import Img2Mesh

log = logging.getLogger(__name__)

#: Share of a GPU each actor asks for: one diffusion and one fitting actor fit on every card.
GPU_SHARE = 0.5


class RayRunner:
    """Runs items on a Ray cluster (a local one when ``address`` is None); see the module docstring."""

    name = "ray"

    def __init__(
        self,
        config: Img2MeshConfig,
        out_root: Path,
        address: str | None = None,
        max_retries: int = 1,
        crash: CrashPlan | None = None,
        pipeline: type[Img2Mesh] = Img2Mesh,
        actors: int | None = None,
    ) -> None:
        self.config = config
        self.out_root = Path(out_root).resolve()
        self.address = address
        self.max_retries = max_retries
        self.crash = crash or CrashPlan()
        self.pipeline = pipeline
        self.actors = actors
        """Actors per GPU pool; None takes the cluster's GPU count (at least 1)."""

    def run(self, items: list[BatchItem], report: Report) -> None:
        """Process ``items`` on the cluster, calling ``report`` once per item (done, failed or lost)."""
        if not items:
            return
        ray = _import_ray()
        self._connect(ray)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = self.actors or max(1, gpus)
        gpu_share = GPU_SHARE if gpus else 0
        prefetch_weights(ray, self.config)
        dataset = self._dataset(ray, items, actors, gpu_share)
        by_key = {item.key: item for item in items}
        seen: set[str] = set()
        for row in dataset.iter_rows():
            record = ItemRecord.from_dict(json.loads(row["record"]))
            seen.add(record.key)
            report(record)
        lost = (
            f"The item never came back from Ray after {self.max_retries + 1} attempt(s): its worker process died "
            "(crash or out of memory) or failed outside the item's own error handling; see the Ray worker logs, "
            "then rerun with --retry-failed."
        )
        for key, item in by_key.items():
            if key not in seen:
                report(lost_record(item, lost))

    def _connect(self, ray: Any) -> None:
        if ray.is_initialized():
            return
        address = None if self.address in (None, "local") else self.address
        try:
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        except ConnectionError as exc:
            raise InputError(
                f"Cannot reach a Ray cluster at {self.address!r} ({exc}); start one (`ray start --head`) "
                "or drop the address to run on this machine."
            ) from None

    def _dataset(self, ray: Any, items: list[BatchItem], actors: int, gpu_share: float) -> Any:
        from ray.data import ActorPoolStrategy, DataContext

        context = DataContext.get_current()
        context.max_errored_blocks = -1  # a block that failed every attempt is dropped; the driver reports it
        context.enable_progress_bars = False  # the batch command shows progress over items itself
        rows = [{"key": item.key, "source": item.source} for item in items]
        setup = (self.pipeline, self.config, self.out_root, self.crash)
        # Bounded attempts: Ray Data's defaults retry a task and restart its actor forever.
        retries = {"max_restarts": -1, "max_task_retries": self.max_retries}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
            dataset = dataset.map(
                ViewsActor,
                fn_constructor_args=(*setup, -(-len(rows) // actors)),  # each actor's share decides "auto" compile
                compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
                num_gpus=gpu_share,
                **retries,
            )
            dataset = dataset.map(
                FitActor,
                fn_constructor_args=setup,
                compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
                num_gpus=gpu_share,
                **retries,
            )
            return dataset.map(write_row, fn_args=setup, num_cpus=1, max_retries=self.max_retries)


def prefetch_weights(ray: Any, config: Img2MeshConfig) -> None:
    """Resolve (and download when missing) the diffusion weights once on every node with a GPU, before any actor."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpu_nodes = [n for n in nodes if n.get("Resources", {}).get("GPU", 0) > 0] or nodes
    fetch = ray.remote(num_cpus=0)(_resolve_weights)
    refs = [
        fetch.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
            config.multiview.model, config.multiview.revision
        )
        for node in gpu_nodes
    ]
    for node, ref in zip(gpu_nodes, refs, strict=True):
        try:
            ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, InputError):
                raise InputError(f"On node {node.get('NodeManagerAddress')}: {cause}") from None
            raise


def _resolve_weights(model: str, revision: str | None) -> str:
    from img2mesh.zero123pp.weights import resolve_model

    return str(resolve_model(model, revision))


class ViewsActor:
    """Phase 1 on a GPU: holds one loaded diffusion model for its whole life."""

    def __init__(
        self, pipeline: type[Img2Mesh], config: Img2MeshConfig, out_root: Path, crash: CrashPlan, images: int = 1
    ) -> None:
        self.pipe = pipeline(config, progress=False).load(images=images)
        self.cache = out_root / ".inputs"
        self.crash = crash

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        item = BatchItem(row["key"], row["source"])
        try:
            made = make_views(self.pipe, item, self.cache, self.crash)
        except ItemFailed as failed:
            return _failed_row(failed.record)
        return {"key": item.key, "record": "", "payload": pickle.dumps(made)}


class FitActor:
    """Phase 2 on a GPU: no model, but a warm CUDA context and allocator across items."""

    def __init__(self, pipeline: type[Img2Mesh], config: Img2MeshConfig, out_root: Path, crash: CrashPlan) -> None:
        self.pipe = pipeline(config, progress=False)
        self.crash = crash

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["record"]:
            return row
        made = pickle.loads(row["payload"])
        try:
            fitted = fit_item(self.pipe, made, self.crash)
        except ItemFailed as failed:
            return _failed_row(failed.record)
        return {"key": row["key"], "record": "", "payload": pickle.dumps(fitted)}


def write_row(
    row: dict[str, Any], pipeline: type[Img2Mesh], config: Img2MeshConfig, out_root: Path, crash: CrashPlan
) -> dict[str, Any]:
    """Phase 3 as a CPU task: write the item's folder; the row carries only its manifest record onwards."""
    if row["record"]:
        return {"key": row["key"], "record": row["record"]}
    fitted = pickle.loads(row["payload"])
    record = write_item(pipeline(config, progress=False), fitted, out_root, crash)
    return {"key": row["key"], "record": json.dumps(asdict(record))}


def _failed_row(record: ItemRecord) -> dict[str, Any]:
    return {"key": record.key, "record": json.dumps(asdict(record)), "payload": b""}


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError(
            "--ray needs Ray Data, which is not installed; run `pip install 'img2mesh[ray]'` or drop --ray."
        ) from None
    return ray
