"""Input validation across the CLI: every bad input gives one clear line, a non-zero exit, no traceback.

Commands run through the real entry point ``sedac.cli.main`` (in-process, so SedacError handling is the
product's), plus one subprocess run of ``python -m sedac.cli``. A command that raises anything but
SystemExit fails the test: a user would have seen a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def sedac(capsys, *args) -> tuple[int, str, str]:
    """Run ``sedac ARGS`` through sedac.cli.main; return (exit code, stdout, stderr)."""
    from sedac.cli import main

    old = sys.argv
    sys.argv = ["sedac", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"`sedac {' '.join(map(str, args))}` raised {type(exc).__name__}: {exc} (a traceback for the user)")
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_clean_failure(result, *patterns: str) -> None:
    code, out, err = result
    assert code != 0, f"exit code 0 for a bad input; stdout={out[-500:]!r}"
    assert "Traceback" not in err and "Traceback" not in out, err[-2000:]
    text = (err + out).lower()
    for p in patterns:
        assert p.lower() in text, f"message does not name {p!r}: {err[-600:]!r}"


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_llama):
    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe
    from transformers import AutoConfig

    d = tmp_path_factory.mktemp("cli_inputs")
    corpus = d / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(WORDS[i:] + WORDS[:i]) + f" number {i}."}) + "\n"
                              for i in range(12)))
    (d / "empty.jsonl").write_text("")
    (d / "blank.txt").write_text("\n\n")
    (d / "a_file").write_text("not a folder")
    corrupt = d / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    fp = fingerprint_from_config(AutoConfig.from_pretrained(tiny_llama))
    good = random_probe(fp, layer=1, bands=[(2, 3)]).save(d / "good.safetensors")
    return {"dir": d, "corpus": corpus, "corrupt": corrupt, "good": good, "model": tiny_llama}


def _collect(f, out, *extra):
    return ["collect", "--model", f["model"], "--dataset", f["corpus"], "--out", out, "--layers", "1",
            "--skip-band", "2-3", "--max-length", "16", "--limit", "4", "--no-resume", *extra]


@pytest.mark.parametrize("case", [
    ("missing dataset", lambda f, o: _collect(f, o, "--dataset", f["dir"] / "nope.jsonl"), ["nope.jsonl"]),
    ("empty dataset", lambda f, o: _collect(f, o, "--dataset", f["dir"] / "empty.jsonl"), ["empty"]),
    ("blank text dataset", lambda f, o: _collect(f, o, "--dataset", f["dir"] / "blank.txt"), ["no text"]),
    ("unknown field", lambda f, o: _collect(f, o, "--field", "no_such_column"), ["no_such_column"]),
    ("layer not a number", lambda f, o: _collect(f, o, "--layers", "abc"), ["layers"]),
    ("layer out of range", lambda f, o: _collect(f, o, "--layers", "99"), ["--layers", "99"]),
    ("negative layer", lambda f, o: _collect(f, o, "--layers", "-3"), ["layer"]),
    ("band reversed", lambda f, o: _collect(f, o, "--skip-band", "3-1"), ["band"]),
    ("band garbage", lambda f, o: _collect(f, o, "--skip-band", "x-y"), ["band"]),
    ("band beyond model", lambda f, o: _collect(f, o, "--skip-band", "2-9"), ["--skip-band", "2-9"]),
    ("bad mode", lambda f, o: _collect(f, o, "--mode", "bogus"), ["--mode"]),
    ("unwritable out (parent is a file)", lambda f, o: _collect(f, f["dir"] / "a_file" / "out"), ["a_file"]),
], ids=lambda c: c[0])
def test_collect_rejects(capsys, files, tmp_path, case):
    _, build, patterns = case
    assert_clean_failure(sedac(capsys, *build(files, tmp_path / "out")), *patterns)


@pytest.mark.parametrize("flag,value", [("--epsilon", "0"), ("--epsilon", "1"), ("--epsilon", "1.5"),
                                        ("--epsilon", "-0.1"), ("--epsilon", "nan"), ("--delta", "0"),
                                        ("--delta", "1"), ("--delta", "2"), ("--delta", "nan")])
def test_calibrate_rejects_bad_risk_levels(capsys, files, tmp_path, flag, value):
    r = sedac(capsys, "calibrate", "--probe", files["good"], "--model", files["model"], "--data", files["corpus"],
              "--out", tmp_path / "p.safetensors", flag, value)
    assert_clean_failure(r, flag)


def test_calibrate_rejects_corrupt_probe(capsys, files, tmp_path):
    r = sedac(capsys, "calibrate", "--probe", files["corrupt"], "--model", files["model"], "--data", files["corpus"],
              "--out", tmp_path / "p.safetensors")
    assert_clean_failure(r, "corrupt")


def test_probe_show_rejects_corrupt_probe(capsys, files):
    assert_clean_failure(sedac(capsys, "probe", "show", files["corrupt"]), "corrupt")
    assert_clean_failure(sedac(capsys, "probe", "show", files["dir"] / "missing.safetensors"), "missing.safetensors")


def test_serve_rejects_corrupt_probe_before_starting(capsys, files):
    assert_clean_failure(sedac(capsys, "serve", "--model", files["model"], "--probe", files["corrupt"], "--port", "1"),
                         "corrupt")
    assert_clean_failure(sedac(capsys, "serve", "--model", files["model"], "--probe", files["good"],
                               "--threshold", "abc"), "--threshold")


def test_train_probe_rejects_bad_inputs(capsys, files, tmp_path):
    assert_clean_failure(sedac(capsys, "train-probe", "--data", tmp_path / "no_shards", "--layer", "1",
                               "--out", tmp_path / "p.safetensors"), "no_shards")


def test_subprocess_entry_point_prints_one_line(files):
    r = subprocess.run([sys.executable, "-m", "sedac.cli", "probe", "show", str(files["corrupt"])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().startswith("error:")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# ----------------------------------------------------------------------------- disk full during collect
def _enospc_open(after: int, name_glob: str):
    """An ``open`` that, on the ``after``-th write-open of a file matching ``name_glob``, writes half
    the data and then raises ENOSPC (what a full disk does mid-write)."""
    import builtins
    import fnmatch

    real_open = builtins.open
    seen = {"n": 0}

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        if "w" in mode and fnmatch.fnmatch(Path(path).name, name_glob):
            seen["n"] += 1
            if seen["n"] == after:
                return Full(f)
        return f

    return fake_open


def _tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _collect_args(f, out):
    return ["collect", "--model", f["model"], "--dataset", f["corpus"], "--out", out, "--layers", "1",
            "--skip-band", "2-3", "--max-length", "16", "--shard-tokens", "32", "--batch-size", "2"]


@pytest.fixture(scope="module")
def clean_collect(files):
    """Reference collection (no fault), SOURCE_DATE_EPOCH fixed."""
    from sedac.collect import CollectConfig, collect

    mp = pytest.MonkeyPatch()
    mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = files["dir"] / "clean"
    try:
        collect(CollectConfig(out=str(out), model=str(files["model"]), dataset=str(files["corpus"]), layers=[1],
                              bands=[(2, 3)], max_length=16, shard_tokens=32, batch_size=2, progress=False))
    finally:
        mp.undo()
    return _tree(out)


@pytest.mark.parametrize("target", [".shard-*", ".manifest.json*"], ids=["shard", "manifest"])
def test_collect_disk_full_keeps_shards_valid_and_resumes(capsys, files, clean_collect, tmp_path, monkeypatch,
                                                          target):
    from sedac.collect import shards as S

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    clean = clean_collect
    n_shards = len(json.loads(clean["manifest.json"])["shards"])
    assert n_shards >= 4, "need several shards for this test"

    out = tmp_path / "full"
    monkeypatch.setattr(S, "open", _enospc_open(3, target), raising=False)
    assert_clean_failure(sedac(capsys, *_collect_args(files, out)), "no space left")
    monkeypatch.delattr(S, "open")

    m = json.loads((out / "manifest.json").read_text())
    assert not m["complete"] and 1 <= len(m["shards"]) < n_shards
    for s in m["shards"]:  # every listed shard is intact: sha256 matches and it loads
        blob = (out / s["file"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == s["sha256"], s["file"]
        assert S.load_shard(out / s["file"])["seq_id"].shape[0] == s["n_tokens"]
    stray = sorted(k for k in _tree(out) if k.startswith("."))

    code, _, err = sedac(capsys, *_collect_args(files, out))
    assert code == 0, err
    resumed = {k: v for k, v in _tree(out).items() if not k.startswith(".")}
    assert resumed.keys() == clean.keys()
    assert all(resumed[k] == clean[k] for k in clean), [k for k in clean if resumed[k] != clean[k]]
    assert not stray, f"the failed write left its temporary file behind (holding disk space): {stray}"


def test_collect_on_a_really_full_tmpfs(capsys, files, clean_collect, tmp_path, monkeypatch):
    """The same with a real full file system: a tmpfs of 96 KiB for shards plus room for two copies of the
    soft-skip histogram (written beside each flush, 4 layers x 2 x 4096 float64 = 256 KiB each) (needs root and
    mount rights; skipped otherwise)."""
    import os
    import shutil

    mnt = tmp_path / "tiny_fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=608k", "tmpfs", str(mnt)], capture_output=True, text=True) \
        if os.geteuid() == 0 and shutil.which("mount") else None
    if r is None or r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    try:
        out = mnt / "out"
        assert_clean_failure(sedac(capsys, *_collect_args(files, out)), "no space left")
        m = json.loads((out / "manifest.json").read_text())
        assert not m["complete"] and m["shards"]
        for s in m["shards"]:
            assert hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() == s["sha256"], s["file"]
        moved = tmp_path / "moved"  # resume where there is space: same result as an uninterrupted run
        shutil.copytree(out, moved, ignore=shutil.ignore_patterns(".*"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    code, _, err = sedac(capsys, *_collect_args(files, moved))
    assert code == 0, err
    assert _tree(moved) == clean_collect
