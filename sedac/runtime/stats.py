"""Skip counters of the vLLM runtime: device-side accumulation, JSON snapshots, Prometheus export.

Counting happens inside the (possibly compiled) forward through ``torch.ops.sedac.accumulate_skips``,
an opaque op that mutates a ``[2, B]`` int64 counter in place (row 0: skipped tokens per band, row 1:
evaluated tokens) without a host sync. Snapshots convert token counts into MLP evaluations
(token x layer, like :meth:`sedac.runtime.hf.HFSkipper.skip_rate`) by multiplying with the band width.

Snapshot layout (also what :func:`sedac.runtime.vllm_plugin.engine_stats` returns)::

    {"bands": {"A-B": {"skipped": int, "evaluated": int, "rate": float}, ...},
     "all": {"skipped": int, "evaluated": int, "rate": float}, "steps": int, "time": float}
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


@torch.library.custom_op("sedac::accumulate_skips", mutates_args=("counts",))
def accumulate_skips(counts: torch.Tensor, skip: torch.Tensor) -> None:
    """``counts[0] += skip.sum(0)``; ``counts[1] += N``. counts ``[2, B]`` int64, skip ``[N, B]`` bool."""
    counts[0] += skip.sum(dim=0)
    counts[1] += skip.shape[0]


@accumulate_skips.register_fake
def _accumulate_skips_fake(counts, skip) -> None:
    return None


def snapshot(counts: list[list[int]], band_names: list[str], widths: list[int], steps: int = 0) -> dict[str, Any]:
    """Per-band and overall skipped/evaluated MLP evaluations from token counters ``[2, B]``."""
    bands = {}
    tot_s = tot_e = 0
    for b, name in enumerate(band_names):
        s, e = int(counts[0][b]) * widths[b], int(counts[1][b]) * widths[b]
        bands[name] = {"skipped": s, "evaluated": e, "rate": s / e if e else 0.0}
        tot_s += s
        tot_e += e
    return {"bands": bands, "all": {"skipped": tot_s, "evaluated": tot_e, "rate": tot_s / tot_e if tot_e else 0.0},
            "steps": int(steps), "time": time.time()}


def empty_snapshot() -> dict[str, Any]:
    return {"bands": {}, "all": {"skipped": 0, "evaluated": 0, "rate": 0.0}, "steps": 0, "time": time.time()}


def write_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON to ``path`` via a temp file + rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_stats(path: str | Path | None) -> dict[str, Any]:
    """The latest snapshot written by the worker, or an empty one (no step ran yet / no file)."""
    if not path:
        return empty_snapshot()
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return empty_snapshot()


class SkipStatsCollector:
    """Prometheus collector exporting a stats file as ``sedac_mlp_{skipped,evaluated}_total{band}``."""

    def __init__(self, path: str | Path):
        self.path = path

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = read_stats(self.path)
        skipped = CounterMetricFamily("sedac_mlp_skipped", "MLP evaluations (token x layer) skipped by sedac",
                                      labels=["band"])
        evaluated = CounterMetricFamily("sedac_mlp_evaluated", "MLP evaluations (token x layer) in sedac skip bands",
                                        labels=["band"])
        rate = GaugeMetricFamily("sedac_mlp_skip_rate", "fraction of MLP evaluations skipped", labels=["band"])
        for name, b in list(snap.get("bands", {}).items()) + [("all", snap.get("all", {}))]:
            skipped.add_metric([name], float(b.get("skipped", 0)))
            evaluated.add_metric([name], float(b.get("evaluated", 0)))
            rate.add_metric([name], float(b.get("rate", 0.0)))
        yield skipped
        yield evaluated
        yield rate
        yield GaugeMetricFamily("sedac_mlp_bytes_saved_fraction",
                                "fraction of all MLP weight bytes not read (soft skip: zeroed inputs; whole-MLP "
                                "skip: skipped evaluations), over every token x layer MLP evaluation so far",
                                value=float(snap.get("mlp_bytes_saved_fraction", 0.0)))
