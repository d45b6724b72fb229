"""`sedac quickstart` orchestration (steps, printed commands, certified/uncertified bench matrix, data split)
with the step subprocesses faked; tests/cli/test_quickstart_real.py runs a small real pipeline."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest
import yaml

from sedac.bench.config import OfflineBenchConfig, QuickstartConfig, from_dict
from sedac.errors import SedacError


def _fake_results():
    e = {"tps": {"median": 10.0, "min": 9.0, "max": 11.0}, "speedup": {"median": 1.0, "min": 1.0, "max": 1.0},
         "greedy_vs_baseline": {"identical_fraction": 1.0, "mean_first_divergence": None}}
    return {"baseline": "vanilla", "variants": {"vanilla": e}, "prompts": {"source": "builtin"}}


@pytest.fixture
def fake_steps(monkeypatch):
    calls = []
    codes = {"calibrate": 0}

    def run(cmd, *a, **kw):
        verb = cmd[3]
        calls.append(cmd[3:])
        if verb == "bench":
            cfg = yaml.safe_load(open(cmd[-1]))
            from pathlib import Path

            Path(cfg["out_dir"]).mkdir(parents=True)
            (Path(cfg["out_dir"]) / "results.json").write_text(json.dumps(_fake_results()))
        return SimpleNamespace(returncode=codes.get(verb, 0))

    monkeypatch.setattr(subprocess, "run", run)
    return calls, codes


@pytest.mark.parametrize("calibrate_rc, certified", [(0, True), (3, False)])
def test_pipeline_steps(fake_steps, tmp_path, capsys, calibrate_rc, certified):
    from sedac.quickstart import run_quickstart

    calls, codes = fake_steps
    codes["calibrate"] = calibrate_rc
    summary = run_quickstart(QuickstartConfig(work_dir=str(tmp_path / "qs")))
    verbs = [c[0] for c in calls]
    assert verbs == ["models", "collect", "collect", "train-probe", "calibrate", "bench"]
    cal = calls[4]
    assert cal[cal.index("--epsilon") + 1] == "0.05"
    assert cal[cal.index("--policies") + 1] == "static-token,soft-uniform"  # whole-MLP and soft skip certified
    assert cal[cal.index("--soft-levels") + 1] == QuickstartConfig().soft_levels
    assert summary["certified"] is certified
    recipe = from_dict(OfflineBenchConfig, yaml.safe_load((tmp_path / "qs" / "bench.yaml").read_text()))
    names = [v.name for v in recipe.variants]
    assert names[:2] == ["vanilla", "ngram"] and ("sedac-certified" in names) is certified
    assert ("ngram+sedac" in names) is certified and any("UNCERTIFIED" in n for n in names) is not certified
    soft = [v for v in recipe.variants if v.name == "sedac-soft-uniform"]
    assert len(soft) == 1 and soft[0].sedac.mode == "soft" and soft[0].sedac.soft_family == "uniform"
    # the bench runs on cal_data records calibration never drew (same seed, the next records of its order)
    assert cal[cal.index("--seed") + 1] == "0" and cal[cal.index("--data") + 1] == "builtin-tasks"
    used = int(cal[cal.index("--grid-sequences") + 1]) + int(cal[cal.index("--n-sequences") + 1])
    p = recipe.prompts
    assert (p.source, p.shuffle_seed, p.skip, p.n) == ("builtin-tasks", 0, used, 8)
    split = summary["split"]
    assert split["calibration"]["order_positions"] == [0, used]
    assert split["bench"]["order_positions"] == [used, used + 8] and len(set(split["bench"]["rows"])) == 8
    err = capsys.readouterr().err
    assert "$ sedac collect" in err and "$ sedac bench offline" in err  # every step's command is printed
    steps = json.loads((tmp_path / "qs" / "quickstart.json").read_text())["steps"]
    assert len(steps) == 6 and all("seconds" in s for s in steps)


def test_split_that_does_not_fit_is_refused_before_any_step(fake_steps, tmp_path):
    from sedac.quickstart import run_quickstart

    calls, _ = fake_steps
    with pytest.raises(SedacError, match="has 660 records"):
        run_quickstart(QuickstartConfig(work_dir=str(tmp_path / "qs"), cal_sequences=650))
    assert calls == []


def test_failed_step_names_the_command(fake_steps, tmp_path):
    from sedac.quickstart import run_quickstart

    calls, codes = fake_steps
    codes["train-probe"] = 1
    with pytest.raises(SedacError, match="re-run it alone with: sedac train-probe"):
        run_quickstart(QuickstartConfig(work_dir=str(tmp_path / "qs")))


def test_cli_help_is_fast():
    import sys
    import time
    from pathlib import Path

    t0 = time.time()
    out = subprocess.run([str(Path(sys.executable).with_name("sedac")), "quickstart", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--work-dir" in out.stdout
    assert time.time() - t0 < 60
