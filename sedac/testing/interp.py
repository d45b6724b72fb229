"""Run a script under Triton's interpreter (``TRITON_INTERPRET=1`` must be set before triton is imported, hence a
subprocess) and return the JSON it prints last: how the kernel tests check every Triton kernel on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_interpreted(script: str, root: Path, timeout: int = 300) -> Any:
    """``python -c script`` in ``root`` (on ``PYTHONPATH``) with ``TRITON_INTERPRET=1``; the last stdout line as
    JSON. Fails (AssertionError with the stderr tail) when the script does."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
