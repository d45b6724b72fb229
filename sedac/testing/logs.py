"""Excerpts of engine logs for test failures: the first root-cause lines, not only the shutdown noise.

A dying vLLM engine prints its root cause (a C++ ``what():``, the first traceback) long before the
last lines, which are the front end's ``Engine core initialization failed``.
"""

from __future__ import annotations

import re
from pathlib import Path

_CAUSE = re.compile(r"terminate called|what\(\):|Traceback|Error\b|ERROR")


def log_excerpt(path: str | Path, tail: int = 30, around: int = 25) -> str:
    """The lines from the first root-cause marker (``around`` of them) plus the last ``tail`` lines."""
    lines = Path(path).read_text(errors="replace").splitlines()
    first = next((i for i, ln in enumerate(lines) if _CAUSE.search(ln)), None)
    if first is None or first >= len(lines) - tail:
        return "\n".join(lines[-tail:])
    head = lines[max(0, first - 3): min(first + around, len(lines) - tail)]
    return "\n".join(["--- first error in the log ---", *head, "--- end of the log ---", *lines[-tail:]])
