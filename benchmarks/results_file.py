"""benchmarks/RESULTS.md: each benchmark owns one section between its own markers and rewrites only that section."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\n"
    "Each section names the script, machine, command and date that produced it; scripts rewrite only their own.\n"
)


def replace_section(begin: str, end: str, body: str) -> None:
    """Put ``body`` between the markers ``begin`` and ``end`` in RESULTS.md (appended with them if absent)."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    section = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)
