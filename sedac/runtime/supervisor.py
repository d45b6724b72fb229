"""Parent of the vLLM server started by ``sedac serve``: signal forwarding and clean-up at exit.

``python -m sedac.runtime.supervisor CLEANUP_DIR -- CMD...`` runs ``CMD`` as a child (same process group, so a
terminal's Ctrl-C reaches it directly), forwards SIGTERM, SIGINT and SIGHUP to it as SIGTERM (vLLM's graceful
shutdown), waits, removes ``CLEANUP_DIR`` (the private stats folder; ``""`` = none) and exits with the child's
status (128 + signal number if a signal ended it). The folder is removed when the server stops by a signal,
exits on its own (an engine crash included) or the supervisor itself exits; only SIGKILL of the supervisor
leaves it behind. Imports nothing heavy: it stays small while the server runs.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def supervise(cmd: list[str], cleanup_dir: str = "") -> int:
    def clean() -> None:
        if cleanup_dir and Path(cleanup_dir).name.startswith("sedac-serve-"):  # only a folder prepare() made
            shutil.rmtree(cleanup_dir, ignore_errors=True)

    atexit.register(clean)
    state: dict = {"child": None, "stop": False}

    def forward(signum, frame) -> None:
        state["stop"] = True
        if state["child"] is not None:
            try:
                state["child"].send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    state["child"] = child = subprocess.Popen(cmd)
    if state["stop"]:  # a signal arrived before the child existed
        child.send_signal(signal.SIGTERM)
    rc = child.wait()
    clean()
    return 128 - rc if rc < 0 else rc


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m sedac.runtime.supervisor CLEANUP_DIR -- CMD...", file=sys.stderr)
        return 2
    return supervise(argv[2:], argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
