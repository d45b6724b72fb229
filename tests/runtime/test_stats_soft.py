"""The Prometheus collector exports the worker's MLP-bytes-saved figure (soft and whole-MLP skip)."""

from __future__ import annotations

from sedac.runtime.stats import SkipStatsCollector, empty_snapshot, write_atomic


def test_bytes_saved_gauge(tmp_path):
    snap = empty_snapshot()
    snap["mlp_bytes_saved_fraction"] = 0.1875
    write_atomic(tmp_path / "s.json", snap)
    metrics = {m.name: m for m in SkipStatsCollector(tmp_path / "s.json").collect()}
    g = metrics["sedac_mlp_bytes_saved_fraction"]
    assert [s.value for s in g.samples] == [0.1875]
    missing = {m.name: m for m in SkipStatsCollector(tmp_path / "none.json").collect()}
    assert [s.value for s in missing["sedac_mlp_bytes_saved_fraction"].samples] == [0.0]
