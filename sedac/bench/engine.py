"""One vLLM engine per benchmark variant, each in its own process, driven over a pipe.

vLLM engines cannot be reconfigured (sedac on/off, speculative decoding), so every variant gets its
own engine; putting each in its own process keeps vLLM's global state (Prometheus counters, the
``SEDAC_VLLM_CONFIG`` environment) per variant and lets the parent interleave the variants' rounds.

Protocol (parent -> worker): ``("run", prompt_ids, max_tokens)`` -> ``("result", dict)``;
``("stop",)``. The worker first answers ``("ready", info)`` or ``("error", message)``.
The baseline worker asserts that sedac is off in its engine (no ``sedac`` key in the engine's
``additional_config``, no ``SEDAC_VLLM_CONFIG`` in its environment, no sedac counters).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from typing import Any

SPEC_COUNTERS = {
    "vllm:spec_decode_num_drafts": "drafts",
    "vllm:spec_decode_num_draft_tokens": "draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "accepted",
}


def _spec_counters(llm) -> dict[str, int]:
    out = {v: 0 for v in SPEC_COUNTERS.values()}
    try:
        metrics = llm.get_metrics()
    except Exception:  # older vLLM or stats disabled
        return out
    for m in metrics:
        key = SPEC_COUNTERS.get(m.name)
        if key is not None and getattr(m, "value", None) is not None:
            out[key] += int(m.value)
    return out


def _plugin():
    try:
        from sedac.runtime import vllm_plugin
    except ImportError:
        return None
    return vllm_plugin


def _sedac_stats(llm) -> dict[str, Any] | None:
    plugin = _plugin()
    if plugin is None:
        return None
    try:
        return plugin.engine_stats(llm)
    except Exception as exc:  # worker extension missing
        return {"error": f"{type(exc).__name__}: {exc}"}


def _assert_sedac_off(llm) -> None:
    """The baseline must never run with sedac on."""
    if os.environ.get("SEDAC_VLLM_CONFIG"):
        raise AssertionError("baseline engine process has SEDAC_VLLM_CONFIG set")
    extra = getattr(llm.llm_engine.vllm_config, "additional_config", None) or {}
    if "sedac" in extra:
        raise AssertionError("baseline engine has a sedac additional_config")
    if _plugin() is not None and llm.collective_rpc("sedac_active")[0]:
        raise AssertionError("baseline engine: the sedac runtime is active in the model")
    stats = _sedac_stats(llm)
    if stats and stats.get("bands"):
        if any(b.get("evaluated", 0) or b.get("skipped", 0) for b in stats["bands"].values()):
            raise AssertionError(f"baseline engine reports sedac activity: {stats}")


def _shutdown(llm) -> None:
    """Stop the engine-core processes (atexit hooks do not run in multiprocessing children)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:
        pass


def _worker(conn, spec: dict[str, Any]) -> None:
    try:
        os.environ.pop("SEDAC_VLLM_CONFIG", None)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(spec.get("kv_cache_gib", 1)))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from vllm import LLM

        kw = dict(spec["llm_kwargs"])
        if _plugin() is not None:
            kw["worker_extension_cls"] = _plugin().WORKER_EXTENSION
        if spec.get("sedac"):
            kw["additional_config"] = {"sedac": spec["sedac"]}
        if spec.get("speculative"):
            kw["speculative_config"] = spec["speculative"]
        t0 = time.perf_counter()
        llm = LLM(model=spec["model"], disable_log_stats=False, **kw)
        start_s = time.perf_counter() - t0
        if spec.get("baseline"):
            _assert_sedac_off(llm)
        elif spec.get("sedac") and not llm.collective_rpc("sedac_active")[0]:
            raise AssertionError("sedac was configured but is not active in the engine's model")
        conn.send(("ready", {"start_s": start_s}))
    except BaseException as exc:  # report, then exit
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
        return
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent gone
            msg = ("stop",)
        if msg[0] == "stop":
            _shutdown(llm)
            break
        try:
            _, prompt_ids, max_tokens = msg
            sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
            before = _spec_counters(llm)
            t0 = time.perf_counter()
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], sp, use_tqdm=False)
            wall = time.perf_counter() - t0
            after = _spec_counters(llm)
            ids = [list(o.outputs[0].token_ids) for o in outs]
            lat = []
            for o in outs:
                m = getattr(o, "metrics", None)
                a, b = getattr(m, "queued_ts", None), getattr(m, "last_token_ts", None)  # engine-core clock
                lat.append(b - a if a and b and b > a else None)
            if spec.get("baseline"):
                _assert_sedac_off(llm)
            conn.send(("result", {
                "wall_s": wall, "token_ids": ids, "tokens": [len(i) for i in ids], "latencies_s": lat,
                "spec": {k: after[k] - before[k] for k in after},
                "sedac_stats": _sedac_stats(llm) if spec.get("sedac") else None,
            }))
        except BaseException as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    conn.close()


class EngineProc:
    """Handle on one variant's engine process."""

    def __init__(self, name: str, spec: dict[str, Any]):
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, spec), name=f"sedac-bench-{name}", daemon=False)
        self.proc.start()
        self.info: dict[str, Any] | None = None
        self.error: str | None = None

    def wait_ready(self, timeout: float = 900.0) -> bool:
        if self.conn.poll(timeout):
            kind, payload = self.conn.recv()
            if kind == "ready":
                self.info = payload
                return True
            self.error = payload
        else:
            self.error = f"engine did not start within {timeout:.0f} s"
        self.close()
        return False

    def run(self, prompt_ids: list[list[int]], max_tokens: int) -> dict[str, Any]:
        self.conn.send(("run", prompt_ids, max_tokens))
        kind, payload = self.conn.recv()
        if kind != "result":
            raise RuntimeError(f"variant {self.name}: {payload}")
        return payload

    def close(self) -> None:
        kids = _descendants(self.proc.pid)  # vLLM's engine-core processes: never leave them behind
        try:
            if self.proc.is_alive():
                self.conn.send(("stop",))
                self.proc.join(60)
        except (OSError, BrokenPipeError):
            pass
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
        for k in kids:  # an orphaned engine core keeps running and holds its parent's stdout/stderr open
            try:
                k.kill()
            except Exception:  # noqa: BLE001 - already gone
                pass


def _descendants(pid: int | None) -> list:
    """Child processes (recursive) of ``pid`` as psutil handles (psutil comes with vLLM)."""
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True) if pid else []
    except Exception:  # noqa: BLE001 - process gone or psutil missing: nothing to reap
        return []
