"""A small rich progress bar showing sequences and tokens/s (no-op when disabled; plain lines in a log)."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, done: int = 0, enabled: bool = True, label: str = "collect"):
        self.enabled = enabled
        self.total, self.done, self.label = total, done, label
        self._p = None

    def __enter__(self) -> "Progress":
        if self.enabled and not sys.stderr.isatty():  # rich would draw nothing into a log file
            from sedac.progress import LineProgress

            self._p = LineProgress(sys.stderr)
            self._task = self._p.add_task(self.label, total=self.total)
            self._p.tasks[self._task].completed = self.done
        elif self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn

            self._p = RP(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("seqs {task.fields[info]}"), TimeElapsedColumn(), transient=False)
            self._p.__enter__()
            self._task = self._p.add_task(self.label, total=self.total, completed=self.done, info="")
        return self

    def update(self, n_seqs: int, n_tokens: int, elapsed: float) -> None:
        self.done += n_seqs
        if self._p is not None:
            self._p.update(self._task, advance=n_seqs,
                           info=f"| {n_tokens} tokens this run | {n_tokens / max(elapsed, 1e-9):.0f} tok/s")

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
