"""Progress of long jobs: rich bars on a terminal, plain lines when the output is a log file.

rich draws nothing while its output is not a terminal, so a redirected ``sedac calibrate`` (20 minutes on
a CPU) was silent until the end. :func:`task_progress` keeps rich's API (``add_task``, ``advance``,
``update``, ``tasks[i].total``) and falls back to :class:`LineProgress` off a terminal.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


def task_progress(enabled: bool = True, stream=None):
    """A rich ``Progress`` (terminal or disabled) or a :class:`LineProgress` (log file)."""
    stream = stream if stream is not None else sys.stderr
    if enabled and not stream.isatty():
        return LineProgress(stream)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=False)


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    start: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)


class LineProgress:
    """One line per task when it finishes, and at most one per ``every_s`` seconds while it runs."""

    def __init__(self, stream, every_s: float = 30.0):
        self.stream, self.every_s = stream, every_s
        self.tasks: list[_Task] = []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.stream.flush()

    def add_task(self, description: str, total: float | None = None, **_) -> int:
        self.tasks.append(_Task(description.strip(), total))
        return len(self.tasks) - 1

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, completed: float | None = None, advance: float | None = None, **_) -> None:
        t = self.tasks[task]
        done_before = t.total is not None and t.completed >= t.total
        if completed is not None:
            t.completed = completed
        if advance is not None:
            t.completed += advance
        now = time.monotonic()
        finished = t.total is not None and t.completed >= t.total and not done_before
        if finished or now - t.last >= self.every_s:
            t.last = now
            total = "?" if t.total is None else f"{t.total:g}"
            print(f"[{t.description}] {t.completed:g}/{total} ({now - t.start:.0f} s)", file=self.stream, flush=True)
