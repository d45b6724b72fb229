"""Progress off a terminal: plain lines (rich would print nothing into a log file)."""

from __future__ import annotations

import io

from sedac.progress import LineProgress, task_progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_lines_terminal_gets_rich():
    assert isinstance(task_progress(True, io.StringIO()), LineProgress)
    assert not isinstance(task_progress(True, _Tty()), LineProgress)
    assert not isinstance(task_progress(False, io.StringIO()), LineProgress)  # disabled: rich, disabled


def test_lines_at_completion_and_interval():
    out = io.StringIO()
    with LineProgress(out, every_s=3600) as bar:
        t = bar.add_task("data          ", total=4)
        bar.advance(t, 1)
        bar.advance(t, 2)
        assert out.getvalue() == ""  # within the interval, not finished: quiet
        bar.advance(t, 1)
        bar.update(t, completed=bar.tasks[t].total)  # already finished: no second line
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[data] 4/4 (")
    out2 = io.StringIO()
    bar = LineProgress(out2, every_s=0)
    u = bar.add_task("full model", total=10)
    for _ in range(3):
        bar.advance(u)
    assert [ln.split(" (")[0] for ln in out2.getvalue().splitlines()] == ["[full model] 1/10", "[full model] 2/10",
                                                                          "[full model] 3/10"]


def test_collect_progress_prints_lines_into_a_log(capsys):
    from sedac.collect.progress import Progress

    with Progress(total=3, done=1, label="collect") as bar:
        bar.update(2, 100, 2.0)
    err = capsys.readouterr().err
    assert err.startswith("[collect] 3/3 (")
