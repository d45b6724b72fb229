"""End to end: `sedac calibrate` on a tiny random model (CLI), plus the real model with a tiny grid (slow)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sedac.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_probe(tiny_llama, tmp_path_factory):
    from sedac.adapter import adapt
    from sedac.models.loading import load_hf
    from sedac.testing.probes import random_probe

    model, _ = load_hf(str(tiny_llama), device="cpu")
    p = random_probe(adapt(model).fingerprint, layer=1, bands=[(2, 3)], seed=5)
    path = tmp_path_factory.mktemp("probe") / "p.safetensors"
    p.save(path)
    return path


def _args(model, probe, out, rep, eps, extra=()):
    return ["calibrate", "--probe", str(probe), "--model", str(model), "--data", "builtin", "--max-length", "32",
            "--n-sequences", "24", "--grid-sequences", "4", "--grid-size", "5", "--grid-min-skip", "0.01",
            "--epsilon", str(eps), "--delta", "0.1", "--out", str(out), "--report-dir", str(rep), "--resamples", "20",
            "--policies", "static-token,dynamic-token,static-batch", *extra]


def test_cli_calibrate_tiny_writes_certificate(tiny_llama, tiny_probe, tmp_path):
    import torch

    from sedac.probes import load_probe
    from sedac.runtime.policy import thresholds_from_probe

    out, rep = tmp_path / "cal.safetensors", tmp_path / "rep"
    res = runner.invoke(app, _args(tiny_llama, tiny_probe, out, rep, 0.5, ["--batch-concurrency", "2",
                                                                          "--test-fraction", "0.5"]))
    assert res.exit_code == 0, res.output
    assert "static-token" in res.output and "report:" in res.output
    p, orig = load_probe(out), load_probe(tiny_probe)
    assert all(torch.equal(p.tensors[k], orig.tensors[k]) for k in orig.tensors)  # tensors untouched
    assert p.meta.layer == orig.meta.layer and p.meta.model_fingerprint == orig.meta.model_fingerprint
    cal = p.meta.calibration
    certs = {c["name"]: c for c in cal["certificates"]}
    assert set(certs) == {"static-token", "dynamic-token", "static-batch"}
    c = certs["static-token"]
    assert c["certified"] and c["upper_bound"] <= 0.5 and c["n_sequences"] == 12 and c["n_tokens"] == 12 * 31
    assert certs["static-batch"]["unit"].startswith("group of 2") and certs["static-batch"]["n_units"] == 6
    assert certs["static-batch"]["batch_concurrency"] == 2 and cal["dtype"] == c["dtype"] == "float32"
    if certs["static-batch"]["certified"]:
        assert cal["batch_concurrency"] == 2
        assert thresholds_from_probe(p, policy="batch").min_rows == 2
    assert {"epsilon", "delta", "bound", "data_fingerprint", "skip_rate", "test_risk", "resampling"} <= set(c)
    assert cal["provenance"]["git_revision"] and cal["default"]["mode"] in ("static", "dynamic")
    st, dy = thresholds_from_probe(p, mode="static"), thresholds_from_probe(p, mode="dynamic")  # what serving reads
    assert st.thresholds == [p.raw_threshold(c["value"])] * len(p.bands)  # the certified grid point, every band
    d = certs["dynamic-token"]
    assert [(x.lam, x.ref) for x in dy.dynamic] == [(d["value"], d["dynamic"]["ref"])] * len(p.bands)
    rep_json = json.loads((rep / "report.json").read_text())
    assert rep_json["curves"]["static-token"]["grid"] == sorted(rep_json["curves"]["static-token"]["grid"], reverse=True)
    assert (rep / "risk_vs_skip.png").stat().st_size > 1000 and "| static-token |" in (rep / "report.md").read_text()
    shown = runner.invoke(app, ["probe", "show", str(out)])
    assert shown.exit_code == 0 and "certificates" in shown.output and "upper_bound" in shown.output


def test_cli_calibrate_nothing_certified_exits_3(tiny_llama, tiny_probe, tmp_path):
    out, rep = tmp_path / "cal.safetensors", tmp_path / "rep"
    # certifiable in principle (24 units: min epsilon 0.09 < 0.15), but the grid's gentlest point skips 30 %
    res = runner.invoke(app, _args(tiny_llama, tiny_probe, out, rep, 0.15, ["--policies", "static-token",
                                                                            "--grid-min-skip", "0.3",
                                                                            "--test-fraction", "0"]))
    assert res.exit_code != 0
    from sedac.errors import CalibrationError

    assert isinstance(res.exception, CalibrationError) and res.exception.exit_code == 3, res.output
    assert "nothing certified at epsilon=0.15" in str(res.exception)
    assert not out.exists() and (rep / "report.md").exists()


def test_uncertifiable_request_is_refused_up_front(tiny_llama, tiny_probe, tmp_path):
    """12 calibration units cannot certify epsilon 0.1 at delta 0.1 (1 - 0.1^(1/12) = 0.175): refused
    before the model loads, naming the relation; 0.2 passes the check."""
    from sedac.calibration import CalibrateConfig
    from sedac.errors import ConfigError

    out, rep = tmp_path / "cal.safetensors", tmp_path / "rep"
    res = runner.invoke(app, _args(tiny_llama, tiny_probe, out, rep, 0.1, ["--policies", "static-token",
                                                                          "--test-fraction", "0.5"]))
    assert isinstance(res.exception, ConfigError), res.output
    assert "1 - delta^(1/n) = 0.1746" in str(res.exception) and "12 calibration units" in str(res.exception)
    CalibrateConfig(probe="p", n_sequences=24, test_fraction=0.5, epsilon=0.18, delta=0.1, policies=["static-token"])
    with pytest.raises(ConfigError, match="groups of 4"):  # the batch policy's units are groups of B
        CalibrateConfig(probe="p", n_sequences=24, test_fraction=0.5, epsilon=0.18, delta=0.1,
                        policies=["static-batch"])


def test_defaults_can_certify_on_builtin_tasks():
    """The documented defaults pass the up-front check with builtin-tasks' 660 prompts (232 + 8 grid used)."""
    from sedac.calibration import CalibrateConfig
    from sedac.calibration.bounds import min_epsilon
    from sedac.collect.data import load_records

    cfg = CalibrateConfig(probe="p", data="builtin-tasks", mode="generate")
    assert len(load_records("builtin-tasks", "train")) >= cfg.n_sequences + cfg.grid_sequences
    n_cal = cfg.n_sequences - round(cfg.n_sequences * cfg.test_fraction)
    assert n_cal == 174 and min_epsilon(n_cal, cfg.delta) < cfg.epsilon == 0.05
    assert cfg.max_length - cfg.new_tokens >= 128  # generate mode keeps whole prompts by default


def test_batch_concurrency_one_is_refused(tiny_llama, tiny_probe, tmp_path):
    from sedac.errors import ConfigError

    out, rep = tmp_path / "cal.safetensors", tmp_path / "rep"
    res = runner.invoke(app, _args(tiny_llama, tiny_probe, out, rep, 0.5, ["--batch-concurrency", "1"]))
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    assert "--batch-concurrency must be >= 2" in str(res.exception)


def test_config_errors_name_the_flag():
    from sedac.calibration import CalibrateConfig
    from sedac.errors import ConfigError

    for kw, flag in [({"epsilon": 0}, "--epsilon"), ({"policies": "static-foo"}, "--policies"),
                     ({"bound": "normal"}, "--bound"), ({"risk": "kl"}, "--risk")]:
        with pytest.raises(ConfigError, match=flag):
            CalibrateConfig(probe="p", **kw)


@pytest.mark.slow
def test_calibrate_smollm2_tiny_grid(smollm2, tmp_path):
    """The real model, a random probe, a 3-point grid: the pipeline runs and the certificate is sane."""
    from sedac.adapter import adapt
    from sedac.calibration import CalibrateConfig, calibrate
    from sedac.models.loading import load_hf
    from sedac.probes import load_probe
    from sedac.testing.probes import random_probe

    model, _ = load_hf(str(smollm2), device="cpu")
    path = tmp_path / "p.safetensors"
    random_probe(adapt(model).fingerprint, layer=20, bands=[(24, 29)], seed=0, bias=-2.0).save(path)
    del model
    cfg = CalibrateConfig(probe=str(path), model=str(smollm2), data="builtin", mode="corpus", max_length=64,
                          n_sequences=16, grid_sequences=2, grid_size=3, grid_min_skip=0.002, grid_max_skip=0.05,
                          epsilon=0.4, delta=0.1, policies=["static-token"], resamples=20, progress=False,
                          test_fraction=0.5)
    s = calibrate(cfg)
    c = s["certificates"][0]
    assert c["certified"] and 0 <= c["empirical_risk"] <= c["upper_bound"] <= 0.4
    assert load_probe(path).meta.calibration["certificates"][0]["n_tokens"] == 8 * 63  # 16 units, half held out


def test_generate_mode_scores_only_continuations(tiny_llama, tiny_probe, tmp_path):
    from sedac.calibration import CalibrateConfig, calibrate

    cfg = CalibrateConfig(probe=str(tiny_probe), model=str(tiny_llama), data="builtin", mode="generate",
                          max_length=40, new_tokens=6, n_sequences=10, grid_sequences=2, grid_size=3,
                          grid_min_skip=0.01, epsilon=0.9, delta=0.1, policies=["static-token"], resamples=5,
                          out=str(tmp_path / "o.safetensors"), report_dir=str(tmp_path / "r"), progress=False)
    s = calibrate(cfg)
    c = s["certificates"][0]
    # only generated tokens are scored: at most new_tokens per sequence (fewer after an early EOS)
    assert c["certified"] and 0 < c["n_tokens"] <= c["n_sequences"] * 6


def test_help_states_the_certified_scope_and_the_units_relation():
    flat = lambda args: " ".join(runner.invoke(app, args, env={"COLUMNS": "1000"}).output.split())  # noqa: E731
    top = flat(["--help"])
    assert "teacher-forced" in top and "calibration data" in top
    cal = flat(["calibrate", "--help"])
    assert "teacher-forced" in cal and "exchangeable" in cal and "1 - delta^(1/n)" in cal
