"""The server's jobs in SQLite (``jobs.sqlite`` beside their folders): what survives a restart.

One row per job: its state (``queued`` → ``running`` → ``done`` or ``failed``), the stage it is in, the options it
was submitted with, seconds per stage and the error sentence. A restart keeps every finished job listed and runs the
queued ones again in submission order; a job that was running when the server stopped (Ctrl-C, a crash, a kill) goes
back to ``queued``, since its folder only appears once complete (:mod:`img2mesh.outputs`) and nothing of it counts.

stdlib :mod:`sqlite3`, one connection shared by the server's threads under a lock (the write rate is a few rows a
second at most), in WAL mode so a reader never waits for a writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from img2mesh.run_record import now

#: File name of the database inside the server's output folder.
DB_NAME = "jobs.sqlite"

State = Literal["queued", "running", "done", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    options TEXT NOT NULL,
    timings TEXT NOT NULL,
    error TEXT,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT
)
"""


@dataclass
class Job:
    """One photo's job as the server keeps it."""

    id: str
    """Random hex id; also the name of the job's output folder."""
    name: str
    """The uploaded photo's file name, for people."""
    state: State = "queued"
    """Where the job is: queued, running, done or failed."""
    stage: str | None = None
    """The stage a running job is in (prepare_input, generate_views, pose_views, fit, write)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The config keys it was submitted with (dotted names, parsed values)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage of a finished job (as in its ``run.json``)."""
    error: str | None = None
    """Why a failed job failed, in one sentence."""
    created: str = field(default_factory=now)
    """UTC time of the upload (ISO 8601)."""
    started: str | None = None
    """UTC time its work started."""
    finished: str | None = None
    """UTC time it ended."""


class JobStore:
    """The jobs table of one server folder; every method is safe to call from any thread."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)

    def requeue_running(self) -> int:
        """Put the jobs left running by a server that stopped back in the queue; returns how many."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET state='queued', stage=NULL, started=NULL, timings='{}' WHERE state='running'"
            )
            return cursor.rowcount

    def add(self, job: Job) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, name, state, stage, options, timings, error, created, started, finished)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.name,
                    job.state,
                    job.stage,
                    json.dumps(job.options),
                    json.dumps(job.timings),
                    job.error,
                    job.created,
                    job.started,
                    job.finished,
                ),
            )

    def update(self, job_id: str, **values: Any) -> None:
        """Set some fields of a job (dict fields are stored as JSON)."""
        columns = ", ".join(f"{name}=?" for name in values)
        params = [json.dumps(v) if isinstance(v, dict) else v for v in values.values()]
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {columns} WHERE id=?", [*params, job_id])

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def jobs(self, state: State | None = None) -> list[Job]:
        """Every job (or those in ``state``), newest first."""
        query, params = "SELECT * FROM jobs", ()
        if state is not None:
            query, params = query + " WHERE state=?", (state,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq DESC", params).fetchall()
        return [_job(row) for row in rows]

    def queued_ids(self) -> Iterator[str]:
        """Ids of the queued jobs in submission order."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY seq").fetchall()
        return (row["id"] for row in rows)

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data.pop("seq")
    data["options"] = json.loads(data["options"])
    data["timings"] = json.loads(data["timings"])
    return Job(**data)
