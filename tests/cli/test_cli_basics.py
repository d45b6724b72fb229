"""The CLI: help lists real commands only, user errors are one line + non-zero exit."""

import re
import subprocess
import sys
import time

from sedac.cli import COMMAND_MODULES, app


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sedac.cli", *args], capture_output=True, text=True,
                          timeout=120, **kw)


def test_help_is_fast_and_lists_models():
    t0 = time.perf_counter()
    proc = run_cli("--help")
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0
    assert "models" in proc.stdout and "probe" in proc.stdout
    assert elapsed < 10, f"`sedac --help` took {elapsed:.1f}s: heavy imports at module level?"


def test_help_has_no_heavy_imports():
    code = ("import sys; import sedac.cli; bad=[m for m in ('torch','vllm','lightning','transformers') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


VERBS = {"models", "collect", "train-probe", "calibrate", "probe", "serve", "bench", "quickstart"}


def test_exactly_the_real_verbs_are_registered_and_listed():
    names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert sorted(names) == sorted(VERBS) and len(COMMAND_MODULES) == len(VERBS)
    for group in app.registered_groups:
        assert group.typer_instance.registered_commands, f"empty group {group.name}"
    help_text = run_cli("--help").stdout
    box = help_text[help_text.index("Commands"):]
    assert {m.group(1) for m in re.finditer(r"^│ (\S+)\s{2,}", box, flags=re.M)} == VERBS


def test_missing_verb_module_is_an_error():
    code = ("import sedac.cli as c; c.COMMAND_MODULES.append('no_such_verb'); c._register_all()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "sedac.cli.no_such_verb" in proc.stderr


def test_corrupt_probe_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    proc = run_cli("probe", "show", str(bad))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
