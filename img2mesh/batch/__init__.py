"""Batch conversion: many photos into one finished output folder each, on one GPU or spread over a Ray cluster.

The pieces, each usable alone: :mod:`~img2mesh.batch.inputs` (items and their stable keys),
:mod:`~img2mesh.batch.shard` (``--shard i/N``), :mod:`~img2mesh.batch.manifest` (``manifest.jsonl``),
:mod:`~img2mesh.batch.phases` (one item's work cut at its GPU/CPU boundaries), the two runners
(:mod:`~img2mesh.batch.local_runner`, :mod:`~img2mesh.batch.ray_runner`) and :mod:`~img2mesh.batch.job`, which plans a
run, keeps the manifest and prints the summary. ``img2mesh batch`` (:mod:`img2mesh.commands.batch`) strings them
together; from Python::

    from img2mesh.batch import LocalRunner, collect_items, run_job

    items = collect_items(["photos/"])
    result = run_job(items, Path("out"), LocalRunner(load_config("default"), Path("out")))
"""

from img2mesh.batch.inputs import BatchItem, collect_items
from img2mesh.batch.job import JobResult, plan_items, print_summary, run_job
from img2mesh.batch.local_runner import LocalRunner
from img2mesh.batch.manifest import ItemRecord, Manifest
from img2mesh.batch.shard import Shard, parse_shard

__all__ = [
    "BatchItem",
    "ItemRecord",
    "JobResult",
    "LocalRunner",
    "Manifest",
    "Shard",
    "collect_items",
    "parse_shard",
    "plan_items",
    "print_summary",
    "run_job",
]
