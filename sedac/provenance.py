"""Provenance helpers: git revision, stable hashes, timestamps.

Every artefact sedac writes (shards, probes, calibration reports, bench results) records the
resolved config, the model fingerprint and the git revision produced here.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parent.parent


def git_revision() -> str:
    """The git commit of the sedac checkout ("+dirty" if modified), or "unknown" outside git."""
    env_rev = os.environ.get("SEDAC_GIT_REVISION")
    if env_rev:
        return env_rev
    try:
        rev = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, paths and tuples into plain JSON types (recursively)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), truncated to ``length`` hex chars."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    """ISO-8601 UTC timestamp (seconds).

    Honours ``SOURCE_DATE_EPOCH`` (the reproducible-builds convention) so that runs with the same
    seed and inputs can produce byte-identical artefacts.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
        if epoch and epoch.isdigit()
        else _dt.datetime.now(_dt.timezone.utc)
    )
    return when.replace(microsecond=0).isoformat()


def provenance(config: Any = None, **extra: Any) -> dict[str, Any]:
    """Standard provenance block: resolved config, git revision, creation time, plus ``extra``."""
    out: dict[str, Any] = {
        "git_revision": git_revision(),
        "created_utc": utc_now(),
        "sedac_version": __import__("sedac").__version__,
    }
    if config is not None:
        out["config"] = to_jsonable(config)
    out.update(to_jsonable(extra))
    return out
