"""The collect shard format: writer (atomic, manifest last) and reader.

Layout of an output folder::

    out/manifest.json
    out/shard-00000.safetensors, shard-00001.safetensors, ...

Each shard holds whole sequences (a sequence never spans two shards); rows are token positions:

=================  =========  ============================================================
``hidden.{L}``     [T, d] f16  residual stream entering decoder layer L (one per layer)
``entropy``        [T] f32     entropy (nats) of the full model's next-token distribution
``top1``           [T] i32     full model's argmax next token
``target``         [T] i32     actual next token (-1 at each sequence's last position)
``nll``            [T] f32     full-model NLL of ``target`` (NaN where target == -1)
``seq_id``         [T] i64     global sequence index (the unit for train/val splits)
``pos``            [T] i32     position within the sequence
``is_prompt``      [T] u8      1 for prompt tokens, 0 for generated/corpus tokens
``keep_top1.A-B``  [T] u8      top-1 unchanged when band A-B's MLPs are skipped (per band)
``dnll.A-B``       [T] f32     NLL_skipped(target) - NLL_full(target) (NaN where target == -1)
``kl.A-B``         [T] f32     KL(full || skipped) of the next-token distributions
=================  =========  ============================================================

Shard ``__metadata__``: ``{"sedac_shard": JSON {"index", "n_tokens", "n_sequences", "first_seq_id",
"last_seq_id"}}``. The manifest (``format = "sedac-shards"``, ``version = 1``) lists the shards in
order with their sha256; it is rewritten (atomically) after every shard, so a shard is part of the
data set exactly when the manifest lists it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sedac.errors import DataError

FORMAT = "sedac-shards"
VERSION = 1
MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. ENOSPC: give the space back, leave no debris
        raise


def write_shard(out_dir: Path, index: int, tensors: dict[str, Any], first_seq_id: int,
                last_seq_id: int) -> dict[str, Any]:
    """Write one shard atomically; returns its manifest entry ``{file, n_tokens, n_sequences, sha256}``."""
    import hashlib

    from safetensors.torch import save

    n_tokens = int(tensors["seq_id"].shape[0])
    meta = {"index": index, "n_tokens": n_tokens, "n_sequences": last_seq_id - first_seq_id + 1,
            "first_seq_id": first_seq_id, "last_seq_id": last_seq_id}
    blob = save({k: v.contiguous() for k, v in sorted(tensors.items())},
                metadata={"sedac_shard": json.dumps(meta, sort_keys=True)})
    path = out_dir / shard_name(index)
    _atomic_write_bytes(path, blob)
    return {"file": path.name, "n_tokens": n_tokens, "n_sequences": meta["n_sequences"],
            "sha256": hashlib.sha256(blob).hexdigest()}


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    blob = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write_bytes(out_dir / MANIFEST, blob)


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of ``out_dir``, or None if there is none; DataError if it is not a sedac one."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if m.get("format") != FORMAT:
        raise DataError(f"{path} is not a sedac shard manifest (format={m.get('format')!r})")
    if m.get("version") != VERSION:
        raise DataError(f"{path} has shard format version {m.get('version')}; this sedac reads version {VERSION}")
    return m


def open_shards(out_dir: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """``(manifest, shard paths in order)`` of a collect output; DataError if missing or incomplete files."""
    out_dir = Path(out_dir)
    m = read_manifest(out_dir)
    if m is None:
        raise DataError(f"no {MANIFEST} in {out_dir}: run `sedac collect --out {out_dir}` first")
    paths = [out_dir / s["file"] for s in m["shards"]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataError(f"shards listed in {out_dir / MANIFEST} are missing: {', '.join(missing)}")
    return m, paths


def load_shard(path: str | Path, keys: list[str] | None = None) -> dict[str, Any]:
    """Tensors of one shard (all, or only ``keys``); DataError naming missing keys."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        have = list(f.keys())
        want = have if keys is None else list(keys)
        missing = [k for k in want if k not in have]
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)}; it has {', '.join(sorted(have))}")
        return {k: f.get_tensor(k) for k in want}


def shard_metadata(path: str | Path) -> dict[str, Any]:
    """The ``sedac_shard`` metadata of a shard."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {})["sedac_shard"])
