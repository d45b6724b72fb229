"""HF transformers integration: install sedac skipping into a loaded model (removable).

A forward pre-hook on the probe layer scores the residual stream entering it and decides, per token
and band, through :mod:`sedac.runtime.policy`; the MLPs of the band layers are wrapped (instance-level
``forward`` override, no change to parameter names) so that skipped rows are not computed
(:func:`sedac.runtime.mlp_ops.run_mlp`). Attention always runs, so the KV cache stays written.

Used by ``collect`` (counterfactual labels via ``mode="always"``), ``calibrate`` (risk on the real
runtime) and ``bench`` (teacher-forced quality).

Dynamic mode keeps, per batch row, the running sum/count of raw scores of the request so far; it is
reset whenever a forward starts at position 0 (a new prompt), so ``generate`` with a KV cache and
teacher-forced full-sequence forwards give the same per-token decisions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from sedac.adapter import adapt
from sedac.errors import ConfigError
from sedac.runtime import policy as P
from sedac.runtime.mlp_ops import run_mlp


class HFSkipper:
    """Skipping installed into an HF model. Use as a context manager or call :meth:`remove`."""

    def __init__(self, model, probe, config: P.SkipConfig, impl: str = "module", record: bool = False,
                 batch_step: str = "forward"):
        """``batch_step`` (batch policy only): ``"forward"`` = one step is the whole forward (all rows);
        ``"position"`` = one step is the set of tokens at the same position across the batch rows,
        which emulates decode steps of ``batch`` concurrent requests in a teacher-forced forward
        (used by ``sedac calibrate``). Either way the step is decided by
        :func:`sedac.runtime.policy.batch_rule` (``config.min_rows``; padding rows do not vote)."""
        if batch_step not in ("forward", "position"):
            raise ConfigError(f"batch_step must be 'forward' or 'position', got {batch_step!r}")
        self.model = model
        self.batch_step = batch_step
        self.parts = adapt(model)
        probe.check_model(self.parts.fingerprint)
        self.probe = probe
        self.config = config
        self.impl = impl
        self.record = record
        self.enabled = True
        self.valid: torch.Tensor | None = None  #: optional [batch, seq] bool of real tokens
        bands = probe.bands
        layer_band: dict[int, int] = {}
        for bi, (a, b) in enumerate(bands):
            for i in range(a, b + 1):
                if i in layer_band:
                    raise ConfigError(f"skip bands overlap at layer {i}; the runtime needs disjoint bands")
                layer_band[i] = bi
        self.layer_band = layer_band
        n_b = len(bands)
        dev = next(model.parameters()).device
        self.skipped = torch.zeros(self.parts.num_layers, dtype=torch.long, device=dev)
        self.evaluated = torch.zeros(self.parts.num_layers, dtype=torch.long, device=dev)
        self.decisions: list[torch.Tensor] = []  #: recorded [N, B] masks (record=True)
        self._skip: torch.Tensor | None = None  # [N, B] for the current forward
        self._state_sum: torch.Tensor | None = None  # [batch, B]
        self._state_cnt: torch.Tensor | None = None  # [batch]
        if config.mode == "static":
            if len(config.thresholds) != n_b:
                raise ConfigError(f"need {n_b} thresholds, got {len(config.thresholds)}")
            self._thr = torch.tensor(config.thresholds, dtype=torch.float32, device=dev)
        elif config.mode == "dynamic":
            d = config.dynamic
            self._lam = torch.tensor([x.lam for x in d], dtype=torch.float32, device=dev)
            self._ref = torch.tensor([x.ref for x in d], dtype=torch.float32, device=dev)
            self._gamma = torch.tensor([x.gamma for x in d], dtype=torch.float32, device=dev)
            self._k = torch.tensor([x.prior_tokens for x in d], dtype=torch.float32, device=dev)
        self._token_config = dataclasses.replace(config, policy="token")
        self._handles: list[Any] = []
        self._orig_forward: dict[int, Any] = {}
        self._install()

    # ------------------------------------------------------------------ install/remove
    def _install(self) -> None:
        layer = self.parts.layers[self.probe.layer]
        self._handles.append(layer.register_forward_pre_hook(self._on_probe_layer, with_kwargs=True))
        for i in self.layer_band:
            mlp = self.parts.mlps[i]
            self._orig_forward[i] = mlp.forward
            mlp.forward = functools.partial(self._mlp_forward, i, mlp, self._orig_forward[i])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for i, fwd in self._orig_forward.items():
            mlp = self.parts.mlps[i]
            if "forward" in vars(mlp):
                del mlp.forward
        self._orig_forward.clear()

    def __enter__(self) -> "HFSkipper":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------------ stats
    def reset_stats(self) -> None:
        self.skipped.zero_()
        self.evaluated.zero_()
        self.decisions.clear()

    def skip_rate(self) -> dict[str, float]:
        """Fraction of token x layer MLP evaluations skipped, per band and overall (band layers)."""
        out = {}
        layers = sorted(self.layer_band)
        for bi, name in enumerate(self.probe.band_names):
            ls = [i for i in layers if self.layer_band[i] == bi]
            ev = int(self.evaluated[ls].sum())
            out[name] = int(self.skipped[ls].sum()) / ev if ev else 0.0
        ev = int(self.evaluated[layers].sum())
        out["all"] = int(self.skipped[layers].sum()) / ev if ev else 0.0
        return out

    # ------------------------------------------------------------------ hooks
    def _on_probe_layer(self, module, args, kwargs):
        if not self.enabled:
            self._skip = None
            return None
        h = args[0] if args else kwargs["hidden_states"]
        bsz, seq, d = h.shape
        raw = self.probe.raw_scores(h.reshape(-1, d))  # [N, B]
        valid = self.valid.reshape(-1).to(raw.device) if self.valid is not None else None
        if self.config.mode == "static":
            thr = self._thr
        elif self.config.mode == "dynamic":
            thr = self._dynamic_thr(raw.view(bsz, seq, -1), kwargs, valid).reshape(bsz * seq, -1)
        else:
            thr = None
        if self.config.policy == "batch" and self.batch_step == "position":
            tok = P.decide(raw, self._token_config, thr=thr, valid=valid).view(bsz, seq, -1)
            small = None
            if self.config.below_b_offset and thr is not None:
                small = P.decide(raw, self._token_config, thr=P.below_b_thresholds(thr, self.config),
                                 valid=valid).view(bsz, seq, -1)
            v = valid.view(bsz, seq) if valid is not None else None
            # the served batch rule, one step per position: all-or-nothing over the rows with a real
            # token there when there are >= min_rows of them, else the token rule (below-B threshold)
            skip = P.batch_rule(tok, v, self.config.min_rows, dim=0, small=small).reshape(bsz * seq, -1)
        else:
            skip = P.decide(raw, self.config, thr=thr, valid=valid)
        self._skip = skip
        if self.record:
            self.decisions.append(skip.detach().cpu())
        return None

    def _dynamic_thr(self, raw, kwargs, valid):
        bsz, seq, nb = raw.shape
        pos = kwargs.get("cache_position")
        if pos is None:
            pos = kwargs.get("position_ids")
        new_prompt = pos is None or int(pos.reshape(-1)[0]) == 0
        if new_prompt or self._state_sum is None or self._state_sum.shape[0] != bsz:
            self._state_cnt = self._k.new_full((bsz,), float(self._k[0]))
            self._state_sum = (self._k * self._ref).expand(bsz, nb).clone()
        v = valid.view(bsz, seq, 1).to(raw.dtype) if valid is not None else torch.ones_like(raw[..., :1])
        r = raw * v
        excl = torch.cumsum(r, dim=1) - r  # sum of earlier tokens of the row in this chunk
        n_before = torch.cumsum(v, dim=1) - v  # [bsz, seq, 1]
        m = (self._state_sum.unsqueeze(1) + excl) / (self._state_cnt.view(bsz, 1, 1) + n_before)
        self._state_sum = self._state_sum + r.sum(dim=1)
        self._state_cnt = self._state_cnt + v.sum(dim=(1, 2))
        return P.dynamic_thresholds(m, self._lam, self._ref, self._gamma)

    def _mlp_forward(self, layer_idx: int, mlp, orig, x):
        skip = self._skip
        if skip is None:
            return orig(x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        col = skip[:, self.layer_band[layer_idx]]
        valid = self.valid.reshape(-1).to(col.device) if self.valid is not None else None
        self.skipped[layer_idx] += col.sum()
        self.evaluated[layer_idx] += valid.sum() if valid is not None else col.numel()
        y = run_mlp(orig if self.impl == "module" else mlp, x2, ~col, impl=self.impl)
        return y.reshape(shape)


def install(model, probe, config: P.SkipConfig, **kw) -> HFSkipper:
    """Install sedac skipping into an HF model; returns the removable :class:`HFSkipper`."""
    return HFSkipper(model, probe, config, **kw)
