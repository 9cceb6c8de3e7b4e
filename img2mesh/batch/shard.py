"""``--shard i/N``: split one job over N independent copies (a Slurm array, N machines) with no item done twice.

Each copy sees the same input list but keeps only the items whose key hashes to its index. The partition depends
on nothing but the key and N — not on the order of the list, the other inputs, the machine or the Python process
(``hash()`` is salted per process, so a real digest is used) — so the N copies need no coordination, together they
cover every item, and a rerun of copy i takes the same items again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from img2mesh.batch.inputs import BatchItem
from img2mesh.errors import InputError


@dataclass(frozen=True)
class Shard:
    """Copy ``index`` of ``count`` (0-based, as Slurm's ``$SLURM_ARRAY_TASK_ID`` with ``--array=0-(N-1)``)."""

    index: int
    """Which copy this is, 0 ≤ index < count."""
    count: int
    """How many copies split the job."""

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        """Whether the item with this key belongs to this copy."""
        return shard_of(key, self.count) == self.index

    def select(self, items: list[BatchItem]) -> list[BatchItem]:
        """The items of this copy, in their given order."""
        return [item for item in items if self.owns(item.key)]


def shard_of(key: str, count: int) -> int:
    """The copy (0..count-1) that owns ``key``."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


def parse_shard(text: str) -> Shard:
    """``"i/N"`` → :class:`Shard`, with one sentence for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise InputError(f"--shard {text!r} must look like i/N, e.g. --shard 0/4 for the first of four copies.")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise InputError(f"--shard {text}: the index must be between 0 and {max(count - 1, 0)} for {count} copies.")
    return Shard(index, count)
