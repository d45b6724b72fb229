"""HF transformers backend of ``sedac collect``: generation and teacher-forced per-token features.

:func:`token_features` runs one full forward (hidden states captured by pre-hooks at the probe
layers, logits -> entropy/top-1/NLL) plus, per skip band, ONE extra forward with every token's band
MLPs skipped (:func:`sedac.runtime.hf.install` with ``SkipConfig(mode="always")``), giving the
counterfactual labels keep_top1 / dnll / kl. With a :class:`sedac.collect.soft.SoftCollector` the
main forward also records the MLP-input magnitude histograms, and each soft level adds ONE forward
with uniform soft skip (:func:`sedac.runtime.hf_soft.install_soft`), giving ``*.soft@<s>`` labels.
See docs/collect.md for what those labels approximate.
"""

from __future__ import annotations

from typing import Any

import torch

from sedac.adapter import ModelParts
from sedac.runtime.policy import SkipConfig


class HiddenCapture:
    """Forward pre-hooks storing the residual stream entering each requested layer ([B, T, d]).

    Layer ``L < num_layers``: the input of decoder layer L; ``L == num_layers``: the input of the
    final norm (the stream before it), per the convention in :mod:`sedac.adapter`.
    """

    def __init__(self, parts: ModelParts, layers: list[int]):
        self.out: dict[int, torch.Tensor] = {}
        self._handles = []
        for L in layers:
            mod = parts.layers[L] if L < parts.num_layers else parts.final_norm
            self._handles.append(mod.register_forward_pre_hook(self._hook(L), with_kwargs=True))

    def _hook(self, L: int):
        def fn(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self.out[L] = h.detach()
        return fn

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def band_probe(fingerprint: dict[str, Any], band: tuple[int, int]):
    """A placeholder probe for ``install(..., SkipConfig(mode="always"))`` (the scores are ignored)."""
    from sedac.testing.probes import random_probe

    return random_probe(fingerprint, layer=band[0], bands=[band])


def _pad_right(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def token_features(model, parts: ModelParts, seqs: list[list[int]], layers: list[int],
                   bands: list[tuple[int, int]], pad_id: int, want_hidden: bool = True,
                   soft=None) -> list[dict[str, torch.Tensor]]:
    """Per-sequence feature dicts (CPU tensors, shard dtypes) for a batch of token sequences.

    Keys: ``hidden.{L}`` (when ``want_hidden``), entropy, top1, target, nll, pos and, per band,
    keep_top1/dnll/kl. Padding (right side) never reaches a real position (causal mask).
    ``soft`` (a :class:`sedac.collect.soft.SoftCollector`): record this batch's histogram into
    ``soft.new_batch()`` during the main forward and add keep_top1/dnll/kl per ``soft.levels``
    (the caller ends the batch with ``soft.end_batch()``).
    """
    from sedac.runtime.hf import install

    dev = next(model.parameters()).device
    ids, mask = _pad_right(seqs, pad_id, dev)
    cap = HiddenCapture(parts, layers) if want_hidden else None
    hooks = None
    if soft is not None:
        from sedac.collect.soft import HistogramHooks

        hooks = HistogramHooks(parts, soft.new_batch(), mask.bool())
    try:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        if cap is not None:
            cap.remove()
        if hooks is not None:
            hooks.remove()
    # Bandwidth-lean statistics (each pass over [B, T, V] costs as much as a good part of the forward):
    # p = softmax(x) is the only [B, T, V] tensor written; with m = argmax x,
    # lse = x_m - log p_m, H = lse - <p, x>, NLL(y) = lse - x_y, and for skipped logits s:
    # KL(p || q) = <p, log p - log q> = -H - <p, s> + lse(s).
    x = logits.float()
    top1 = x.argmax(-1)  # [B, T]
    p = torch.softmax(x, -1)  # [B, T, V]
    lse = x.gather(-1, top1[..., None]).squeeze(-1) - p.gather(-1, top1[..., None]).squeeze(-1).log()
    ent = lse - torch.linalg.vecdot(p, x)  # [B, T]
    lens = [len(s) for s in seqs]
    tgt = torch.full_like(ids, -1)
    tgt[:, :-1] = ids[:, 1:]
    for i, n in enumerate(lens):
        tgt[i, n - 1:] = -1
    x_tgt = x.gather(-1, tgt.clamp_min(0)[..., None]).squeeze(-1)
    nll = torch.where(tgt >= 0, lse - x_tgt, torch.full_like(lse, float("nan")))
    del logits, x
    feats: list[dict[str, torch.Tensor]] = []
    for i, n in enumerate(lens):
        f = {
            "entropy": ent[i, :n],
            "top1": top1[i, :n].to(torch.int32),
            "target": tgt[i, :n].to(torch.int32),
            "nll": nll[i, :n],
            "pos": torch.arange(n, dtype=torch.int32),
        }
        if cap is not None:
            for L in layers:
                f[f"hidden.{L}"] = cap.out[L][i, :n].to(torch.float16)
        feats.append(f)

    def counterfactual(name: str, s_all: torch.Tensor) -> None:
        s_all = s_all.float()
        for i, n in enumerate(lens):
            s_i = s_all[i, :n]  # [n, V]
            lse_s = torch.logsumexp(s_i, -1)
            f = feats[i]
            s_tgt = s_i.gather(-1, tgt[i, :n].clamp_min(0)[:, None]).squeeze(-1)
            f[f"keep_top1.{name}"] = (s_i.argmax(-1) == top1[i, :n]).to(torch.uint8)
            f[f"dnll.{name}"] = (lse_s - s_tgt) - f["nll"]  # NaN where target == -1
            f[f"kl.{name}"] = (-f["entropy"] - torch.linalg.vecdot(p[i, :n], s_i) + lse_s).clamp_min(0)

    for band in bands:
        with install(model, band_probe(parts.fingerprint, band), SkipConfig(mode="always")):
            counterfactual(f"{band[0]}-{band[1]}", model(input_ids=ids, attention_mask=mask, use_cache=False).logits)
    if soft is not None and soft.levels:
        from sedac.collect.soft import soft_key
        from sedac.runtime.hf_soft import install_soft
        from sedac.runtime.soft import SoftParams

        table = soft.label_table()
        for level in soft.levels:
            with install_soft(model, SoftParams(family="uniform", lam=level), table):
                counterfactual(soft_key(level), model(input_ids=ids, attention_mask=mask, use_cache=False).logits)
    return [{k: v.cpu() for k, v in f.items()} for f in feats]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], new_tokens: int, temperature: float,
             seed: int) -> list[list[int]]:
    """Continuations (token ids, cut after the first EOS) of left-padded ``prompts`` in one batch."""
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    kw: dict[str, Any] = dict(max_new_tokens=new_tokens, pad_token_id=pad, min_new_tokens=1)
    if temperature > 0:
        torch.manual_seed(seed)
        kw.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), **kw)[:, T:].cpu()
    eos = set(tokenizer.eos_token_id if isinstance(tokenizer.eos_token_id, list) else [tokenizer.eos_token_id])
    conts = []
    for row in out.tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        conts.append(row[:cut])
    return conts
