"""`sedac serve` without an engine: the stats reader, the API-server middleware (in process), the supervisor."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sedac.runtime.stats import MAX_STATS_BYTES, public_snapshot, read_stats, write_atomic

SNAP = {"bands": {"2-3": {"skipped": 1, "evaluated": 4, "rate": 0.25}},
        "all": {"skipped": 1, "evaluated": 4, "rate": 0.25}, "steps": 3, "time": 0.0,
        "config": {"probe": "/secret/place/probe.safetensors", "stats_file": "/tmp/sedac-serve-x/stats.json",
                   "mode": "static"}}


@pytest.fixture
def private(tmp_path):
    d = Path(tempfile.mkdtemp(prefix="sedac-serve-", dir=tmp_path))
    return d / "stats.json"


def test_reads_the_workers_snapshot(private):
    write_atomic(private, SNAP)
    assert read_stats(private)["all"]["skipped"] == 1


def test_symlink_at_the_stats_path_is_not_followed(private, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"secret": "root-only data"}))
    secret.chmod(0o600)
    private.symlink_to(secret)
    snap = read_stats(private)
    assert "secret" not in snap and snap["steps"] == 0


def test_oversized_fifo_and_open_folder_refused(private, tmp_path):
    private.write_text(json.dumps({**SNAP, "pad": "x" * MAX_STATS_BYTES}))
    assert read_stats(private)["steps"] == 0  # larger than the cap: not read
    private.unlink()
    os.mkfifo(private)
    t0 = time.monotonic()
    assert read_stats(private)["steps"] == 0 and time.monotonic() - t0 < 2  # no writer: must not block
    private.unlink()
    write_atomic(private, SNAP)
    private.parent.chmod(0o777)  # a folder others can write to: anyone could have planted the file
    assert read_stats(private)["steps"] == 0
    private.parent.chmod(0o700)
    assert read_stats(private)["steps"] == 3


def test_public_snapshot_has_no_local_paths():
    out = json.dumps(public_snapshot(SNAP))
    assert "/secret/place" not in out and "sedac-serve-x" not in out and "stats_file" not in out
    assert json.loads(out)["config"]["probe"] == "probe.safetensors"


# ------------------------------------------------------------------ middleware, in process (no engine)
def _app(model_path: str):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def ok(request):
        return PlainTextResponse("ok")

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "alias", "root": model_path}]})

    return Starlette(routes=[Route(p, ok, methods=["GET", "POST"]) for p in
                             ("/health", "/invocations", "/tokenize", "/docs", "/openapi.json", "/v1/completions",
                              "/metrics", "/scale_elastic_ep")] + [Route("/v1/models", models)])


def _call(mw, method, path, key=None):
    import httpx

    async def go():
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t") as c:
            return await c.request(method, path, headers=headers)

    return asyncio.run(go())


def test_middleware_requires_the_key_everywhere_but_health(monkeypatch, private):
    from sedac.runtime.serve_app import SedacServeMiddleware

    write_atomic(private, SNAP)
    monkeypatch.setenv("SEDAC_API_KEYS", json.dumps(["k1", "k2"]))
    monkeypatch.setenv("SEDAC_STATS_FILE", str(private))
    monkeypatch.setenv("SEDAC_MODEL_PATH", "/home/me/.cache/sedac/models/x")
    mw = SedacServeMiddleware(_app("/home/me/.cache/sedac/models/x"))
    assert _call(mw, "GET", "/health").status_code == 200
    for method, path in [("POST", "/invocations"), ("POST", "/tokenize"), ("GET", "/docs"), ("GET", "/openapi.json"),
                         ("POST", "/v1/completions"), ("GET", "/metrics"), ("GET", "/sedac/stats"),
                         ("POST", "/scale_elastic_ep"), ("GET", "/v1/models"), ("GET", "/health/"),
                         ("GET", "/nonexistent")]:
        assert _call(mw, method, path).status_code == 401, path
        assert _call(mw, method, path, key="wrong").status_code == 401, path
        assert _call(mw, method, path, key="k2").status_code in (200, 307, 404), path
    stats = _call(mw, "GET", "/sedac/stats", key="k1")
    assert stats.json()["steps"] == 3 and "/secret/place" not in stats.text and str(private) not in stats.text
    models = _call(mw, "GET", "/v1/models", key="k1")
    assert models.json()["data"][0]["root"] == "alias" and ".cache/sedac" not in models.text


def test_middleware_without_key_is_open(monkeypatch):
    from sedac.runtime.serve_app import SedacServeMiddleware

    monkeypatch.delenv("SEDAC_API_KEYS", raising=False)
    monkeypatch.delenv("SEDAC_STATS_FILE", raising=False)
    mw = SedacServeMiddleware(_app("/p"))
    assert _call(mw, "POST", "/invocations").status_code == 200


# ------------------------------------------------------------------ supervisor
def _supervised(tmp_path, child_code: str):
    folder = Path(tempfile.mkdtemp(prefix="sedac-serve-", dir=tmp_path))
    (folder / "stats.json").write_text("{}")
    ready = tmp_path / "ready"
    code = f"import pathlib, sys, time; pathlib.Path({str(ready)!r}).touch(); {child_code}"
    proc = subprocess.Popen([sys.executable, "-m", "sedac.runtime.supervisor", str(folder), "--",
                             sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    return proc, folder


def test_supervisor_forwards_sigterm_and_removes_the_folder(tmp_path):
    proc, folder = _supervised(tmp_path, "time.sleep(120)")
    try:
        proc.send_signal(signal.SIGTERM)  # to the supervisor only: the child dies only if it is forwarded
        assert proc.wait(30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not folder.exists()


def test_supervisor_cleans_up_after_a_crash(tmp_path):
    proc, folder = _supervised(tmp_path, "sys.exit(3)")
    assert proc.wait(30) == 3
    assert not folder.exists()
