"""Start `sedac serve` on loopback for tests: a free port, a bounded wait for /health, a clean stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from sedac.testing.logs import log_excerpt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def sedac_server(args: list[str], log_path: Path, timeout_s: float = 400, env: dict | None = None) -> Iterator[str]:
    """Run ``sedac serve ARGS --port P`` (loopback), yield ``http://127.0.0.1:P`` once /health answers 200.

    Raises RuntimeError with the log's tail if the server exits or is not up within ``timeout_s``.
    The whole process group is terminated on exit.
    """
    import httpx

    port = free_port()
    cut = args.index("--") if "--" in args else len(args)  # sedac options first, vLLM pass-through after `--`
    cmd = [str(Path(sys.executable).with_name("sedac")), "serve", *args[:cut], "--port", str(port), *args[cut:]]
    env = dict(os.environ if env is None else env)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.time() + timeout_s
            while True:
                if proc.poll() is not None:
                    tail = log_excerpt(log_path)
                    raise RuntimeError(f"sedac serve exited (rc={proc.returncode}):\n{tail}")
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"sedac serve did not come up in {timeout_s:.0f} s")
                time.sleep(2)
            yield base
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
