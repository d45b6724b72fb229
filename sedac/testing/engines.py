"""Run a vLLM engine spec in a subprocess (the test file is its own driver script), for the vLLM tests.

Each engine gets a fresh process: vLLM keeps global state, and the plugin is loaded (or not) at start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sedac.testing.logs import log_excerpt


def run_driver(script: str | Path, tmp: Path, name: str, spec: dict, *, plugins: bool = True, timeout: int = 900,
               expect_fail: bool = False) -> dict | str:
    """``python script SPEC OUT`` with ``spec``; returns the JSON it wrote (fails with the log's root cause).

    ``plugins=False`` runs plain vLLM (no sedac plugin); ``expect_fail``: the engine must fail, returns its log.
    """
    spec_p, out_p, log_p = tmp / f"{name}.spec.json", tmp / f"{name}.out.json", tmp / f"{name}.log"
    spec_p.write_text(json.dumps(spec))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("SEDAC_VLLM_CONFIG", None)
    env.pop("VLLM_PLUGINS", None)
    if not plugins:
        env["VLLM_PLUGINS"] = ""
    with open(log_p, "w") as log:
        proc = subprocess.run([sys.executable, str(script), str(spec_p), str(out_p)], env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=timeout)
    if expect_fail:
        assert proc.returncode != 0 and not out_p.exists(), f"engine {name} should have failed"
        return log_p.read_text()
    if proc.returncode != 0 or not out_p.exists():
        raise AssertionError(f"engine {name} failed (rc={proc.returncode}):\n{log_excerpt(log_p)}")
    return json.loads(out_p.read_text())
