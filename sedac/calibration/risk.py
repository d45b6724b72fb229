"""Per-unit risk and skip rate of a skip setting, measured on the real HF runtime (teacher-forced).

For every calibration sequence the full model runs ONCE (:func:`full_pass`): its top-1 prediction
and the log-probability of the actual next token at every scored position, plus the residual stream
entering the probe layer ``L``. Each grid point then runs the model again with
:func:`sedac.runtime.hf.install` skipping (:func:`measure`). Layers ``< L`` compute exactly the same
thing with and without skipping (the decision is made at ``L``), so the skipped run starts from the
cached stream at ``L`` (:class:`PrefixCache`: earlier layers become identities and a pre-hook on
layer ``L`` substitutes the cached input) -- the same arithmetic as a full forward, fewer FLOPs.

Risk of one sequence (the iid unit), over its scored positions (all positions with a next token in
corpus mode; the positions predicting generated tokens in generate mode):

* ``top1``: fraction of positions whose top-1 differs from the full model's;
* ``nll``: fraction whose NLL of the actual next token grew by more than ``margin`` nats.

Batch policy: a decode step is emulated as the tokens at one position across ``B`` concurrent
sequences run as one ``[B, T]`` forward (``HFSkipper(batch_step="position")``) under the served
rule (:func:`sedac.runtime.policy.batch_rule` with ``min_rows`` B: all-or-nothing where all B rows
have a token, token rule where fewer do); the B sequences then influence each other's decisions, so
the iid unit becomes the group of B sequences (risk = mean of its sequences' risks), formed from
consecutive sequences of the shuffled order (leftover dropped). :func:`sedac.calibration.run.measure_policy`
combines this with the token rule's risk of the same sequences (concurrency < B).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from sedac.runtime.hf import install


@dataclass
class CalSequence:
    """One calibration sequence: token ids; predictions at positions ``>= first_scored`` count."""

    ids: list[int]
    first_scored: int


def _pad(seqs: list[CalSequence], dev) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids ``[b, T]``, valid ``[b, T]`` and scored ``[b, T]`` masks (pads never reach real
    positions under the causal mask)."""
    T = max(len(s.ids) for s in seqs)
    ids = torch.zeros((len(seqs), T), dtype=torch.long)
    valid = torch.zeros((len(seqs), T), dtype=torch.bool)
    scored = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        n = len(s.ids)
        ids[i, :n] = torch.tensor(s.ids)
        valid[i, :n] = True
        scored[i, s.first_scored: n - 1] = True
    return ids.to(dev), valid.to(dev), scored.to(dev)


def _targets_logp(logits, ids):
    """top-1 ``[b, T]`` and log p(actual next token) ``[b, T]`` (last position: 0)."""
    lp = logits.float().log_softmax(-1)
    top1 = lp.argmax(-1)
    tgt = torch.zeros_like(ids)
    tgt[:, :-1] = ids[:, 1:]
    return top1, lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def full_pass(model, parts, probe, seqs: list[CalSequence], batch_size: int, progress=None) -> list[dict]:
    """Full-model reference per sequence: ``top1``, ``logp``, ``hidden`` (entering the probe layer), ``raw``."""
    dev = next(model.parameters()).device
    out: list[dict] = []
    cap: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        cap["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = parts.layers[probe.layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for s in range(0, len(seqs), batch_size):
            chunk = seqs[s: s + batch_size]
            ids, valid, _ = _pad(chunk, dev)
            logits = model(input_ids=ids, attention_mask=valid.long(), use_cache=False).logits
            top1, logp = _targets_logp(logits, ids)
            del logits
            raw = probe.raw_scores(cap["h"].reshape(-1, cap["h"].shape[-1])).view(ids.shape[0], ids.shape[1], -1)
            for i, q in enumerate(chunk):
                n = len(q.ids)
                out.append({"top1": top1[i, :n].cpu(), "logp": logp[i, :n].cpu(),
                            "hidden": cap["h"][i, :n].cpu(), "raw": raw[i, :n].cpu()})
            if progress is not None:
                progress(len(chunk))
    finally:
        handle.remove()
    return out


@contextmanager
def PrefixCache(parts, layer: int):
    """Make decoder layers ``< layer`` identities and feed ``state["hidden"]`` into layer ``layer``.

    Yields the ``state`` dict; set ``state["hidden"]`` (``[b, T, d]``) before each forward. Must be
    entered BEFORE installing the skipper so this pre-hook runs before the skipper's.
    """
    state: dict[str, torch.Tensor] = {}

    def ident(hidden_states, *args, **kwargs):
        return hidden_states

    def sub(module, args, kwargs):
        h = state["hidden"]
        if args:
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    for i in range(layer):
        parts.layers[i].forward = ident
    handle = parts.layers[layer].register_forward_pre_hook(sub, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()
        for i in range(layer):
            if "forward" in vars(parts.layers[i]):
                del parts.layers[i].forward


def _band_weights(probe) -> torch.Tensor:
    return torch.tensor([b - a + 1 for a, b in probe.bands], dtype=torch.float32)


def per_sequence(chunk, ref, scored, top1, logp, frac, risk: str, nll_margin: float,
                 seq_risk: list[float], seq_skip: list[float]) -> None:
    """Append each sequence's risk (share of scored positions whose top-1 differs / whose NLL grew by more
    than ``nll_margin``) and its mean ``frac: [b, T]`` over the scored positions (one unit each)."""
    dev = top1.device
    for i, r in enumerate(ref):
        n = len(chunk[i].ids)
        m = scored[i, :n]
        if risk == "top1":
            bad = top1[i, :n] != r["top1"].to(dev)
        else:
            bad = (r["logp"].to(dev) - logp[i, :n]) > nll_margin
        cnt = max(int(m.sum()), 1)
        seq_risk.append(float((bad & m).sum()) / cnt)
        seq_skip.append(float((frac[i, :n] * m).sum()) / cnt)


@torch.no_grad()
def measure(model, parts, probe, seqs: list[CalSequence], full: list[dict], skip_cfg, *, unit_size: int,
            batch_size: int, risk: str, nll_margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit risk and skip fraction ``([n_units], [n_units])`` of one :class:`SkipConfig`.

    Token policy, ``unit_size`` 1: forwards of ``batch_size`` sequences (decisions are per row, so
    batching does not change them). Batch policy: forwards of exactly ``unit_size`` sequences, each
    position one emulated decode step of ``unit_size`` concurrent requests under the served rule
    (``skip_cfg.min_rows``): ``unit_size`` 1 is a lone request (token rule on every step).
    """
    dev = next(model.parameters()).device
    per_step = unit_size > 1 or skip_cfg.policy == "batch"
    fwd = unit_size if per_step else batch_size
    n_use = len(seqs) - len(seqs) % unit_size
    w = _band_weights(probe).to(dev)
    seq_risk, seq_skip = [], []
    with PrefixCache(parts, probe.layer) as state:
        step = "position" if per_step else "forward"
        with install(model, probe, skip_cfg, record=True, batch_step=step) as sk:
            for s in range(0, n_use, fwd):
                chunk, ref = seqs[s: s + fwd], full[s: s + fwd]
                ids, valid, scored = _pad(chunk, dev)
                hid = torch.zeros(ids.shape + (ref[0]["hidden"].shape[-1],), dtype=ref[0]["hidden"].dtype)
                for i, r in enumerate(ref):
                    hid[i, : r["hidden"].shape[0]] = r["hidden"]
                state["hidden"] = hid.to(dev)
                sk.valid = valid
                sk.decisions.clear()
                logits = model(input_ids=ids, attention_mask=valid.long(), use_cache=False).logits
                top1, logp = _targets_logp(logits, ids)
                del logits
                dec = sk.decisions[-1].to(dev).view(ids.shape[0], ids.shape[1], -1).float()  # [b, T, nb]
                frac = (dec * w).sum(-1) / w.sum()  # [b, T] share of band-layer MLPs skipped
                per_sequence(chunk, ref, scored, top1, logp, frac, risk, nll_margin, seq_risk, seq_skip)
    r = np.asarray(seq_risk).reshape(-1, unit_size).mean(1)
    k = np.asarray(seq_skip).reshape(-1, unit_size).mean(1)
    return r, k


def n_scored_tokens(seqs: list[CalSequence]) -> int:
    return int(sum(max(len(s.ids) - 1 - s.first_scored, 0) for s in seqs))
