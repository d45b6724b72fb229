"""`sedac serve` validation: every user error stops before an engine starts (no engine here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sedac.errors import ConfigError, ProbeError
from sedac.runtime.serve import ServeConfig, prepare


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
    return prepare(ServeConfig(model=str(tiny_llama), **kw))


def test_plain_vllm_without_probe(tiny_llama):
    argv, env = _argv(tiny_llama)
    assert "--additional-config" not in argv and "--middleware" not in argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--dtype") + 1] == "float32"


def test_probe_and_speculative_args(tiny_llama, probes):
    argv, env = _argv(tiny_llama, probe=str(probes["good"]), threshold="0.7", policy="batch",
                      speculative="ngram", num_speculative_tokens=3, port=9123,
                      vllm_args=["--dtype", "bfloat16", "--enforce-eager"])
    block = json.loads(argv[argv.index("--additional-config") + 1])["sedac"]
    assert block["threshold"] == 0.7 and block["policy"] == "batch" and block["stats_file"] == env["SEDAC_STATS_FILE"]
    spec = json.loads(argv[argv.index("--speculative-config") + 1])
    assert spec["method"] == "ngram" and spec["num_speculative_tokens"] == 3
    assert argv.count("--dtype") == 1 and argv[-2:] == ["bfloat16", "--enforce-eager"]  # user's dtype wins
    assert argv[argv.index("--port") + 1] == "9123"


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
