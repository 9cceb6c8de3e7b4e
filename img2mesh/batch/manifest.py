"""``manifest.jsonl``: one line per finished attempt at an item, the job's history and its table of contents.

A JSON-lines file only ever appended to: a crash loses at most the line being written, never the lines before it,
and several copies of a job (``--shard``) can share one output folder and one manifest. Each line is written with a
single ``write`` on a file opened for appending, under an advisory lock, so lines from concurrent writers never
interleave. Reading keeps the last record per key (a retried item's new line replaces its old one) and skips a
torn last line. The item folders stay the truth about what is finished (:func:`img2mesh.run_record.is_complete`);
the manifest adds what the folders cannot say: which items failed, why, and how long each took.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

#: File name of the manifest inside a batch output folder.
MANIFEST_NAME = "manifest.jsonl"


@dataclass
class ItemRecord:
    """What happened to one item in one attempt (one manifest line)."""

    key: str
    """The item's key, also its output folder's name."""
    input: str
    """Path or URI of the photo."""
    status: Literal["done", "failed"]
    """"done": the folder is complete; "failed": nothing was left behind and ``error`` says why."""
    error: str | None = None
    """One sentence: what went wrong (for bad input, also how to fix it)."""
    traceback: str | None = None
    """The traceback of an unexpected error (a bug), for a bug report; None for bad input."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage, as in ``run.json``."""
    outputs: list[str] = field(default_factory=list)
    """Files written, relative to the batch output folder."""
    started: str | None = None
    """UTC time the item started (ISO 8601)."""
    finished: str | None = None
    """UTC time the item ended (ISO 8601)."""
    worker: str | None = None
    """Host and process that finished the item."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemRecord:
        """A record read back from a manifest line (unknown keys from newer versions are ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


class Manifest:
    """The manifest of one batch output folder."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / MANIFEST_NAME

    def append(self, record: ItemRecord) -> None:
        """Add one line, atomically with respect to other writers."""
        line = (json.dumps(asdict(record), separators=(",", ":")) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with _locked(fd):
                os.write(fd, line)
                os.fsync(fd)
        finally:
            os.close(fd)

    def latest(self) -> dict[str, ItemRecord]:
        """The last record of every key in the file (empty when there is no manifest yet)."""
        records: dict[str, ItemRecord] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return records
        for line in text.splitlines():
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash while it was written
            if isinstance(data, dict) and "key" in data:
                records[data["key"]] = ItemRecord.from_dict(data)
        return records


@contextlib.contextmanager
def _locked(fd: int):
    # Advisory lock: appends are already atomic on local disks; the lock covers network file systems too.
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
