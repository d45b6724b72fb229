"""`sedac serve` on the GPU, compiled with CUDA graphs (no --enforce-eager): OpenAI client + /metrics.

    python scripts/gpu_vllm_serve.py OUT.json      # (scripts/gpu_vllm.sh runs it on the GPU machine)

Tiny random Llama, random probe (layer 1 -> band 2-3) at score threshold 0.5; one chat completion, one
streamed; then the skip counters must show up in vLLM's Prometheus /metrics and in /sedac/stats.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(out: Path) -> None:
    import httpx
    from openai import OpenAI

    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe
    from sedac.testing.server import free_port
    from sedac.testing.tiny import make_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="sedac-serve-gpu-"))
    model = make_tiny_model(tmp / "tiny", arch="llama")
    fp = fingerprint_from_config(json.loads((model / "config.json").read_text()))
    probe = random_probe(fp, layer=1, bands=[(2, 3)]).save(tmp / "probe.safetensors")
    port = free_port()
    cmd = [sys.executable, "-c", "from sedac.cli import main; main()", "serve", "--model", str(model),
           "--probe", str(probe), "--threshold", "0.5", "--stats-interval", "0.2", "--port", str(port), "--",
           "--max-model-len", "512", "--kv-cache-memory-bytes", str(256 << 20), "--gpu-memory-utilization", "0.5",
           "--attention-backend", "TRITON_ATTN", "--compilation-config", '{"cudagraph_capture_sizes": [1, 2, 4, 8]}']
    log_path = out.parent / "serve.log"
    base, res = f"http://127.0.0.1:{port}", {"ok": False}
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"sedac serve exited rc={proc.returncode}")
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() - t0 > 240:
                    raise RuntimeError("sedac serve did not come up in 240 s")
                time.sleep(2)
            res["start_s"] = round(time.time() - t0, 1)
            client = OpenAI(base_url=f"{base}/v1", api_key="unused")
            msgs = [{"role": "user", "content": "hello hello hello"}]
            r = client.chat.completions.create(model=str(model), messages=msgs, max_tokens=32, temperature=0)
            res["completion_tokens"] = r.usage.completion_tokens
            chunks = list(client.chat.completions.create(model=str(model), messages=msgs, max_tokens=8,
                                                         temperature=0, stream=True))
            res["stream_chunks"] = len(chunks)
            deadline = time.time() + 10
            while True:  # the worker flushes its counters every 0.2 s
                st = httpx.get(f"{base}/sedac/stats", timeout=5).json()
                if st["all"]["evaluated"] > 0 or time.time() > deadline:
                    break
                time.sleep(0.3)
            res["stats"] = st
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            res["metrics"] = [ln for ln in metrics.splitlines() if ln.startswith("sedac_mlp_")]
            ev = [ln for ln in res["metrics"] if ln.startswith('sedac_mlp_evaluated_total{band="2-3"}')]
            res["ok"] = bool(r.usage.completion_tokens > 0 and ev and float(ev[0].split()[-1]) > 0
                             and "vllm:" in metrics and st["impl"] == "op")
        except Exception as exc:  # noqa: BLE001 - reported in the JSON and the exit code
            res["error"] = repr(exc)
            res["log_tail"] = log_path.read_text().splitlines()[-30:]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    out.write_text(json.dumps(res, indent=1))
    print("SERVE", json.dumps({k: v for k, v in res.items() if k != "log_tail"}), flush=True)
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
