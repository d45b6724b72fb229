"""The Prometheus collector exports the worker's MLP-bytes-saved figure (soft and whole-MLP skip)."""

from __future__ import annotations

from sedac.runtime.stats import SkipStatsCollector, empty_snapshot, write_atomic


def test_bytes_saved_gauge(tmp_path):
    tmp_path.chmod(0o700)  # the reader only trusts a private directory
    snap = empty_snapshot()
    snap["mlp_bytes_saved_fraction"] = 0.1875
    write_atomic(tmp_path / "s.json", snap)
    col = SkipStatsCollector(tmp_path / "s.json")
    col.refresh()
    metrics = {m.name: m for m in col.collect()}
    g = metrics["sedac_mlp_bytes_saved_fraction"]
    assert [s.value for s in g.samples] == [0.1875]
    col = SkipStatsCollector(tmp_path / "none.json")
    col.refresh()
    missing = {m.name: m for m in col.collect()}
    assert [s.value for s in missing["sedac_mlp_bytes_saved_fraction"].samples] == [0.0]
