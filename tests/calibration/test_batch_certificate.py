"""The batch-policy certificate covers what is served: a lone request, 2 concurrent requests and B.

Tiny random model, corpus chunks of the built-in prompts: ``sedac calibrate`` certifies static-batch at
B = 4; the threshold read back from the probe (the path vLLM takes) is then served -- emulated on the
HF runtime, one decode step per position across c concurrent sequences -- on sequences the
calibration never saw, at c = 1, 2 and B. Each measured risk must be <= epsilon. (Certifying the
B-step risk alone -- the old object -- picks a below-B threshold whose lone-request risk exceeds it.)
"""

from __future__ import annotations

import pytest

EPS, DELTA, B = 0.2, 0.1, 3


@pytest.fixture(scope="module")
def served(tiny_llama, tmp_path_factory):
    from sedac.adapter import adapt
    from sedac.calibration import CalibrateConfig, calibrate
    from sedac.calibration.data import load_cal_sequences
    from sedac.models.loading import load_hf
    from sedac.probes import load_probe
    from sedac.testing.probes import random_probe

    tmp = tmp_path_factory.mktemp("batch_cert")
    model, tok = load_hf(str(tiny_llama), device="cpu")
    parts = adapt(model)
    path = tmp / "p.safetensors"
    random_probe(parts.fingerprint, layer=1, bands=[(2, 3)], seed=5).save(path)
    common = dict(probe=str(path), model=str(tiny_llama), data="builtin", mode="corpus", max_length=24,
                  grid_sequences=8, epsilon=EPS, delta=DELTA, test_fraction=0.0, seed=0, progress=False)
    cfg = CalibrateConfig(**common, n_sequences=120, grid_size=10, grid_min_skip=0.01, grid_max_skip=0.5,
                          policies=["static-token", "static-batch"], batch_concurrency=B, resamples=0,
                          out=str(tmp / "cal.safetensors"), report_dir=str(tmp / "rep"))
    summary = calibrate(cfg)
    # the same seed orders the data the same way: everything after the first 8 + 120 is unseen
    allseqs, _ = load_cal_sequences(CalibrateConfig(**common, n_sequences=1000, policies=["static-token"]),
                                    model, tok)
    held = allseqs[8 + 120:]
    return dict(model=model, parts=parts, probe=load_probe(tmp / "cal.safetensors"), held=held, summary=summary)


def _risk(served, cfg, c):
    from sedac.calibration.risk import full_pass, measure

    model, parts, probe, held = served["model"], served["parts"], served["probe"], served["held"]
    full = full_pass(model, parts, probe, held, 8)
    r, k = measure(model, parts, probe, held, full, cfg, unit_size=c, batch_size=8, risk="top1", nll_margin=0.0)
    return float(r.mean()), float(k.mean())


def test_batch_certificate_records_b_and_holds_at_concurrency_1_2_and_b(served):
    from sedac.runtime.policy import thresholds_from_probe

    cert = {c["name"]: c for c in served["summary"]["certificates"]}["static-batch"]
    assert cert["certified"] and cert["batch_concurrency"] == B and cert["skip_rate"] > 0
    assert cert["below_b_value"] >= cert["value"]  # below B: a token threshold at least as conservative
    assert served["probe"].meta.calibration["batch_concurrency"] == B
    assert len(served["held"]) >= 60
    cfg = thresholds_from_probe(served["probe"], policy="batch")  # what the vLLM plugin serves
    assert cfg.min_rows == B
    risks = {c: _risk(served, cfg, c) for c in (1, 2, B)}
    for c, (r, _) in risks.items():
        assert r <= EPS, f"served at concurrency {c}: measured risk {r:.3f} > epsilon {EPS} ({risks})"
    assert risks[1][1] > 0 and risks[B][1] > 0  # both regimes really skip (neither is "never")


def test_serving_another_b_than_certified_is_refused(served):
    from sedac.errors import ConfigError
    from sedac.runtime.policy import thresholds_from_probe

    with pytest.raises(ConfigError, match="certified at"):
        thresholds_from_probe(served["probe"], policy="batch", batch_concurrency=2)
    with pytest.raises(ConfigError, match=">= 2"):
        thresholds_from_probe(served["probe"], policy="batch", batch_concurrency=1)
