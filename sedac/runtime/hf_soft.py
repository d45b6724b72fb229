"""Soft skip in an HF transformers model: the exact masked-math reference (removable).

Every MLP of the model is wrapped (instance-level ``forward`` override; parameter names unchanged) to
run :func:`sedac.runtime.soft.hf_soft_mlp` with per-token thresholds from
:func:`sedac.runtime.soft.thresholds`. For the probe-controlled family a forward pre-hook on the probe
layer scores the residual stream entering it and sets the per-token level of the layers ``>=`` the
probe layer; earlier layers (which run before the probe) use the base level ``lam``. Attention always
runs. With level 0 every MLP output is bit-identical to the unmodified model's.

Counters: ``saved[l]`` sums, over evaluated rows, the fraction of layer ``l``'s MLP weight bytes that a
sparse kernel need not read (:func:`sedac.runtime.soft.bytes_saved_fraction`); ``row_saved`` (when
``record``) holds the last forward's per-row sum over layers, which calibration turns into the
per-sequence *MLP weight bytes saved*.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from sedac.adapter import adapt
from sedac.runtime import soft as S


class HFSoftSkipper:
    """Soft skip installed into an HF model. Use as a context manager or call :meth:`remove`."""

    def __init__(self, model, params: S.SoftParams, table: torch.Tensor, probe=None, record: bool = False):
        if params.family == "probe" and probe is None:
            raise ValueError("the soft-probe family needs a probe")
        self.model, self.params, self.probe, self.record = model, params, probe, record
        self.parts = adapt(model)
        if probe is not None:
            probe.check_model(self.parts.fingerprint)
        n = self.parts.num_layers
        if table.shape[0] != n:
            raise ValueError(f"soft table has {table.shape[0]} layers, the model {n}")
        dev = next(model.parameters()).device
        self.table = table.to(dev, torch.float32)
        self.valid: torch.Tensor | None = None  #: optional [batch, seq] bool of real tokens
        self.saved = torch.zeros(n, dtype=torch.float64, device=dev)
        self.evaluated = torch.zeros(n, dtype=torch.long, device=dev)
        self.row_saved: torch.Tensor | None = None  #: [N] sum over layers of the saved fraction
        self._level: torch.Tensor | None = None  # [N] level of layers >= probe layer (family probe)
        self._first = probe.layer if (probe is not None and params.family == "probe") else n
        self._handles: list[Any] = []
        self._wrapped: list[int] = []
        self._install()

    def _install(self) -> None:
        if self._first < self.parts.num_layers:
            layer = self.parts.layers[self._first]
            self._handles.append(layer.register_forward_pre_hook(self._on_probe_layer, with_kwargs=True))
        for i, mlp in enumerate(self.parts.mlps):
            mlp.forward = functools.partial(self._mlp_forward, i, mlp)
            self._wrapped.append(i)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for i in self._wrapped:
            mlp = self.parts.mlps[i]
            if "forward" in vars(mlp):
                del mlp.forward
        self._wrapped.clear()

    def __enter__(self) -> "HFSoftSkipper":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def reset_stats(self) -> None:
        self.saved.zero_()
        self.evaluated.zero_()
        self.row_saved = None

    def bytes_saved(self) -> float:
        """Fraction of all MLP weight bytes not read, over every evaluated (layer, token)."""
        ev = int(self.evaluated.sum())
        return float(self.saved.sum()) / ev if ev else 0.0

    # ------------------------------------------------------------------ hooks
    def _on_probe_layer(self, module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        raw = self.probe.raw_scores(h.reshape(-1, h.shape[-1]))[:, 0]  # [N] first band's raw score
        self._level = S.levels(raw, self.params, raw.shape[0], raw.device)
        return None

    def _mlp_forward(self, layer_idx: int, mlp, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        n = x2.shape[0]
        if layer_idx >= self._first and self._level is not None and self._level.shape[0] == n:
            level = self._level
        else:
            level = S.levels(None, self.params, n, x2.device)
        thr_x, thr_h = S.thresholds(self.table, layer_idx, level, self.params.a_x, self.params.a_h)
        y, zx, zh = S.hf_soft_mlp(mlp, x2, thr_x, thr_h)
        frac = S.bytes_saved_fraction(zx, zh, x2.shape[-1], mlp.down_proj.weight.shape[1])  # [N]
        valid = self.valid.reshape(-1).to(x2.device) if self.valid is not None else None
        if valid is not None:
            frac = frac * valid
        self.saved[layer_idx] += frac.sum().double()
        self.evaluated[layer_idx] += int(valid.sum()) if valid is not None else n
        if self.record:
            self.row_saved = frac if layer_idx == 0 or self.row_saved is None else self.row_saved + frac
        return y.reshape(shape)


def install_soft(model, params: S.SoftParams, table: torch.Tensor, probe=None, **kw) -> HFSoftSkipper:
    """Install soft skip into an HF model; returns the removable :class:`HFSoftSkipper`."""
    return HFSoftSkipper(model, params, table, probe=probe, **kw)


@torch.no_grad()
def measure_histograms(model, seqs: list[list[int]], batch_size: int = 8, valid_from: list[int] | None = None):
    """Per-layer magnitude histograms of the MLP inputs ``x`` and ``h`` over the tokens of ``seqs``.

    Used to build the :class:`sedac.runtime.soft.SoftTable` quantiles (``collect`` and ``calibrate``).
    ``valid_from[i]`` (optional) excludes the first positions of sequence ``i``.
    """
    parts = adapt(model)
    hist = S.MagnitudeHistogram(parts.num_layers)
    dev = next(model.parameters()).device
    state: dict[str, torch.Tensor] = {}
    handles = []
    for i, mlp in enumerate(parts.mlps):
        def pre_x(mod, args, i=i):
            hist.add(i, 0, args[0], state.get("valid"))

        def pre_h(mod, args, i=i):
            hist.add(i, 1, args[0], state.get("valid"))

        handles.append(mlp.register_forward_pre_hook(pre_x))
        handles.append(mlp.down_proj.register_forward_pre_hook(pre_h))
    try:
        for s in range(0, len(seqs), batch_size):
            chunk = seqs[s: s + batch_size]
            T = max(len(q) for q in chunk)
            ids = torch.zeros(len(chunk), T, dtype=torch.long)
            valid = torch.zeros(len(chunk), T, dtype=torch.bool)
            for j, q in enumerate(chunk):
                ids[j, : len(q)] = torch.tensor(q)
                start = valid_from[s + j] if valid_from is not None else 0
                valid[j, start: len(q)] = True
            state["valid"] = valid.to(dev)
            model(input_ids=ids.to(dev), attention_mask=_pad_mask(chunk, T, dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return hist


def _pad_mask(chunk: list[list[int]], T: int, dev) -> torch.Tensor:
    m = torch.zeros(len(chunk), T, dtype=torch.long)
    for j, q in enumerate(chunk):
        m[j, : len(q)] = 1
    return m.to(dev)
