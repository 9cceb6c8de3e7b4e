"""A batch job from inputs to summary: which items to run, the runner, the manifest, progress and the exit status.

The runners only turn items into records; this module decides what a rerun must do and keeps the books. An item
whose folder is complete (``run.json`` present, every file it lists there) is skipped by default; an item the
manifest says failed is skipped too unless ``retry_failed``, so rerunning an interrupted job does only what is left,
and rerunning a finished one does nothing. Every record is appended to ``manifest.jsonl`` the moment it arrives, so
the manifest is current even when the job is killed.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from img2mesh.batch.inputs import BatchItem
from img2mesh.batch.manifest import ItemRecord, Manifest
from img2mesh.batch.shard import Shard
from img2mesh.run_record import is_complete


class Runner(Protocol):
    """What a runner does: turn items into records, reporting each one as it is known."""

    name: str

    def run(self, items: list[BatchItem], report) -> None: ...


@dataclass
class Plan:
    """The items of a job split by what this run does with them."""

    todo: list[BatchItem] = field(default_factory=list)
    """Items to process now."""
    already_done: list[BatchItem] = field(default_factory=list)
    """Items whose folder is complete (skipped)."""
    failed_before: list[ItemRecord] = field(default_factory=list)
    """Last records of items that failed in an earlier run and are not retried."""


def plan_items(items: list[BatchItem], out_root: Path, skip_existing: bool = True, retry_failed: bool = False) -> Plan:
    """Split ``items`` into work for this run and items an earlier run settled."""
    latest = Manifest(out_root).latest()
    plan = Plan()
    for item in items:
        record = latest.get(item.key)
        if skip_existing and is_complete(out_root / item.key):
            plan.already_done.append(item)
        elif skip_existing and not retry_failed and record is not None and record.status == "failed":
            plan.failed_before.append(record)
        else:
            plan.todo.append(item)
    return plan


@dataclass
class JobResult:
    """What a job did, for its summary and exit status."""

    plan: Plan
    records: list[ItemRecord]
    """Records of the items processed in this run, in the order they finished."""
    seconds: float
    """Wall time of this run's processing."""
    runner: str

    @property
    def failed(self) -> list[ItemRecord]:
        """Items failed in this run, then those that failed earlier and were left alone."""
        return [r for r in self.records if r.status == "failed"] + self.plan.failed_before

    @property
    def done(self) -> int:
        return sum(r.status == "done" for r in self.records)

    @property
    def ok(self) -> bool:
        """Whether every item of the job is finished."""
        return not self.failed


def run_job(
    items: list[BatchItem],
    out_root: Path,
    runner: Runner,
    shard: Shard | None = None,
    skip_existing: bool = True,
    retry_failed: bool = False,
    progress: bool = True,
) -> JobResult:
    """Run the job's share of ``items`` (``shard``) with ``runner`` into ``out_root`` and keep the manifest."""
    out_root.mkdir(parents=True, exist_ok=True)
    if shard is not None:
        items = shard.select(items)
    plan = plan_items(items, out_root, skip_existing, retry_failed)
    manifest = Manifest(out_root)
    records: list[ItemRecord] = []
    bar = _ItemProgress(len(plan.todo), enabled=progress)

    def report(record: ItemRecord) -> None:
        manifest.append(record)
        records.append(record)
        bar.update(record)

    start = time.perf_counter()
    try:
        runner.run(plan.todo, report)
    finally:
        bar.close()
    return JobResult(plan, records, time.perf_counter() - start, runner.name)


class _ItemProgress:
    """A bar over items: done, failed and items per second."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.counts: Counter[str] = Counter()
        self.bar = tqdm(total=total, unit="item", desc="batch", disable=not enabled or total == 0, file=sys.stderr)

    def update(self, record: ItemRecord) -> None:
        self.counts[record.status] += 1
        self.bar.set_postfix(done=self.counts["done"], failed=self.counts["failed"], refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def print_summary(result: JobResult, out_root: Path, stream: TextIO | None = None) -> None:
    """The table printed at the end of a job: counts, throughput, mean seconds per stage, failed items."""
    stream = stream or sys.stdout
    plan = result.plan
    processed = len(result.records)
    rows = [
        ("done", str(result.done)),
        ("failed", str(processed - result.done)),
        ("already done (skipped)", str(len(plan.already_done))),
        ("failed earlier (skipped)", str(len(plan.failed_before))),
        ("runner", result.runner),
        ("wall time", f"{result.seconds:.1f} s"),
    ]
    if processed and result.seconds > 0:
        rows.append(("throughput", f"{60 * result.done / result.seconds:.2f} items/min"))
    stages: dict[str, list[float]] = {}
    for record in result.records:
        if record.status == "done":
            for stage, seconds in record.timings.items():
                stages.setdefault(stage, []).append(seconds)
    rows += [(f"mean {stage}", f"{sum(v) / len(v):.2f} s") for stage, v in stages.items()]
    width = max(len(name) for name, _ in rows)
    print(f"\nbatch into {out_root}", file=stream)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=stream)
    if result.failed:
        print("failed items (see manifest.jsonl; rerun with --retry-failed):", file=stream)
        for record in result.failed:
            print(f"  {record.key}: {record.error}", file=stream)
