"""Soft-skip data of ``sedac collect``: magnitude histograms of the MLP inputs and soft labels.

* **Histograms.** Inside the main teacher-forced forward of every batch (no extra forward), forward
  pre-hooks on each MLP (input ``x`` of gate/up) and on each ``down_proj`` (input ``h``) add the
  real (non-padding) token rows to a :class:`sedac.runtime.soft.MagnitudeHistogram` (counts
  ``[L, 2, N_BINS]`` float64, ``m = 0`` for ``|x|``, ``m = 1`` for ``|h|``). The run keeps the running
  sum over the batches of the flushed shards in ``soft_hist.safetensors`` (see :mod:`sedac.collect.run`
  for how it stays consistent under resume).
* **Label table.** Soft labels need per-layer thresholds before the histogram of the whole run
  exists, so the run fixes one quantile table (:func:`sedac.runtime.soft.table_from_histograms`) from
  the histogram of its **first batch** (sequences ``[0, --batch-size)``) and uses it for every batch;
  it is stored in ``soft_label_table.safetensors`` and reloaded on resume, never recomputed.
* **Labels.** Per ``--soft-level s``: one extra forward with
  :func:`sedac.runtime.hf_soft.install_soft` and ``SoftParams(lam=s)`` (every token, every layer at
  level ``s``; ``a_x = a_h = 1``), giving ``keep_top1/dnll/kl.soft@<s>`` like the band labels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from sedac.errors import DataError
from sedac.runtime.soft import N_BINS, MagnitudeHistogram, table_from_histograms

HIST_FILE = "soft_hist.safetensors"
LABEL_TABLE_FILE = "soft_label_table.safetensors"


def soft_key(level: float) -> str:
    """Label-name suffix of a soft level: ``0.2`` -> ``"soft@0.2"``."""
    return f"soft@{float(level):g}"


class HistogramHooks:
    """Pre-hooks adding the real rows of every MLP's ``x`` and ``h`` to ``hist`` (remove after use)."""

    def __init__(self, parts, hist: MagnitudeHistogram, valid: torch.Tensor):
        self._handles = []
        for i, mlp in enumerate(parts.mlps):
            self._handles.append(mlp.register_forward_pre_hook(self._hook(hist, i, 0, valid)))
            self._handles.append(mlp.down_proj.register_forward_pre_hook(self._hook(hist, i, 1, valid)))

    @staticmethod
    def _hook(hist: MagnitudeHistogram, layer: int, m: int, valid: torch.Tensor):
        def fn(module, args):
            hist.add(layer, m, args[0], valid)
        return fn

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class SoftCollector:
    """Per-run soft-skip state: the running histogram, the fixed label table and the levels."""

    def __init__(self, num_layers: int, levels: list[float], total: torch.Tensor | None = None,
                 table: torch.Tensor | None = None):
        self.num_layers = num_layers
        self.levels = [float(s) for s in levels]
        self.total = MagnitudeHistogram(num_layers)
        if total is not None:
            self.total.counts.copy_(total)
        self.table = table  #: label table [L, 2, Q] (None until the first batch, or without levels)
        self.batch: MagnitudeHistogram | None = None

    def new_batch(self) -> MagnitudeHistogram:
        self.batch = MagnitudeHistogram(self.num_layers)
        return self.batch

    def label_table(self) -> torch.Tensor:
        """The fixed label table; the first call builds it from the current (first) batch's histogram."""
        if self.table is None:
            self.table = table_from_histograms(self.batch.counts)
        return self.table

    def end_batch(self) -> None:
        self.total.merge(self.batch)
        self.batch = None


# ------------------------------------------------------------------------------------------ files
def _save(out: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, Any]:
    from safetensors.torch import save

    from sedac.collect.shards import _atomic_write_bytes

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    _atomic_write_bytes(out / name, blob)
    return {"file": name, "sha256": hashlib.sha256(blob).hexdigest()}


def _load(out: Path, entry: dict[str, Any], key: str) -> torch.Tensor:
    from safetensors.torch import load

    path = out / entry["file"]
    if not path.exists():
        raise DataError(f"{path} (listed in {out / 'manifest.json'}) is missing")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise DataError(f"{path} does not match the sha256 in {out / 'manifest.json'}")
    return load(blob)[key]


def hist_name(n_shards: int, final: bool) -> str:
    """File of the running histogram after ``n_shards`` shards (numbered while the run is partial)."""
    return HIST_FILE if final else f"soft_hist-{n_shards:05d}.safetensors"


def write_hist(out: Path, counts: torch.Tensor, n_shards: int, final: bool) -> dict[str, Any]:
    """Write the histogram of the first ``n_shards`` shards; returns the manifest entry."""
    entry = _save(out, hist_name(n_shards, final), {"counts": counts.double()}, {"n_shards": str(n_shards)})
    entry.update(n_shards=n_shards, shape=list(counts.shape), n_bins=N_BINS)
    return entry


def write_label_table(out: Path, table: torch.Tensor) -> dict[str, Any]:
    return _save(out, LABEL_TABLE_FILE, {"table": table.float()}, {})


def read_hist(out: str | Path, manifest: dict[str, Any]) -> torch.Tensor | None:
    """Histogram counts ``[L, 2, N_BINS]`` (float64) a manifest lists, or None (older collections)."""
    entry = manifest.get("soft_hist")
    return None if not entry else _load(Path(out), entry, "counts")


def read_label_table(out: str | Path, manifest: dict[str, Any]) -> torch.Tensor | None:
    entry = (manifest.get("soft_labels") or {}).get("table")
    return None if not entry else _load(Path(out), entry, "table")


def stale_hist_files(out: Path, keep: str | None) -> list[Path]:
    return [p for p in out.glob("soft_hist*.safetensors") if p.name != keep]
