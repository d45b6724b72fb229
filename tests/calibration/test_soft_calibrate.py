"""`sedac calibrate --policies soft-uniform,soft-probe` on the tiny model: the stored parameters are the served rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sedac.cli import app

runner = CliRunner()


@pytest.fixture(scope="module", params=["uniform", "greedy"])
def calibrated(tiny_llama, tmp_path_factory, request):
    from sedac.adapter import adapt
    from sedac.models.loading import load_hf
    from sedac.testing.probes import random_probe

    model, _ = load_hf(str(tiny_llama), device="cpu")
    d = tmp_path_factory.mktemp("soft")
    p = random_probe(adapt(model).fingerprint, layer=1, bands=[(1, 3)], seed=5)
    p.save(d / "p.safetensors")
    args = ["calibrate", "--probe", str(d / "p.safetensors"), "--model", str(tiny_llama), "--data", "builtin",
            "--max-length", "32", "--n-sequences", "24", "--grid-sequences", "4", "--epsilon", "0.5", "--delta", "0.1",
            "--out", str(d / "cal.safetensors"), "--report-dir", str(d / "rep"), "--resamples", "5",
            "--policies", "soft-uniform,soft-probe", "--soft-levels", "0.05,0.1,0.2", "--soft-gamma", "0.2",
            "--stop-factor", "0", "--soft-alloc", request.param, "--soft-alloc-target", "0.1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return d, model, request.param


def test_soft_certificates_and_table_written(calibrated):
    from sedac.probes import load_probe

    d, _, alloc = calibrated
    p = load_probe(d / "cal.safetensors")
    assert p.meta.format_version == 2 and p.soft_table() is not None
    certs = {c["name"]: c for c in p.meta.calibration["certificates"]}
    assert set(certs) == {"soft-uniform", "soft-probe"}
    for name, c in certs.items():
        assert c["certified"] and c["value_kind"] == "soft level lam"
        assert c["soft"]["lam"] == c["value"]
        assert 0 < c["mlp_bytes_saved"] <= 1
        assert c["soft_alloc"]["rule"] == alloc
    assert ("greedy allocation" in p.meta.soft["source"]) == (alloc == "greedy")
    rep = json.loads((d / "rep" / "report.json").read_text())
    assert rep["curves"]["soft-uniform"]["grid"] == [0.05, 0.1, 0.2]


def test_served_parameters_reproduce_the_certified_measurement(calibrated, tiny_llama):
    """Load the calibrated probe like a runtime does and re-measure: same risk and bytes as the certificate's curve."""
    from sedac.adapter import adapt
    from sedac.calibration.config import CalibrateConfig
    from sedac.calibration.data import load_cal_sequences
    from sedac.calibration.risk import full_pass
    from sedac.calibration.soft import measure_soft
    from sedac.models.loading import load_hf
    from sedac.probes import load_probe
    from sedac.runtime.soft import soft_from_probe

    d, _, _ = calibrated
    p = load_probe(d / "cal.safetensors")
    rep = json.loads((d / "rep" / "report.json").read_text())
    cfg = CalibrateConfig(probe=str(d / "cal.safetensors"), model=str(tiny_llama), data="builtin", max_length=32,
                          n_sequences=24, grid_sequences=4, progress=False, epsilon=0.5, delta=0.1,
                          policies=["soft-uniform", "soft-probe"])
    model, tok = load_hf(str(tiny_llama), device="cpu")
    seqs, _ = load_cal_sequences(cfg, model, tok)
    units = seqs[cfg.grid_sequences:]
    full = full_pass(model, adapt(model), p, units, 8)
    for family in ("uniform", "probe"):
        params, table = soft_from_probe(p, family)
        r, k = measure_soft(model, p, units, full, params, table, batch_size=8, risk="top1", nll_margin=0.1)
        curve = rep["curves"][f"soft-{family}"]
        j = curve["grid"].index(params.lam)
        assert np.mean(r) == pytest.approx(curve["risk_all"][j], abs=1e-12)
        assert np.mean(k) == pytest.approx(curve["skip_all"][j], abs=1e-12)
