"""vLLM backend of ``sedac collect``: residual-stream capture inside the vLLM worker.

:class:`CollectWorker` is a vLLM *worker extension* (engine argument
``worker_extension_cls="sedac.collect.vllm_worker.CollectWorker"``): its methods are mixed into the
worker and called by name through ``LLM.collective_rpc``. It registers forward pre-hooks on the
worker's model (found through :func:`sedac.adapter.adapt`, which handles vLLM model objects):

* vLLM decoder layers take ``(positions, hidden_states, residual)`` and fuse the residual add into the
  next RMSNorm, so the residual stream entering layer ``L`` is ``hidden_states + residual`` of that
  layer's inputs (``residual is None`` at layer 0: the stream is ``hidden_states``, the embedding);
* for ``L == num_layers`` the final norm's inputs ``(hidden_states, residual)`` give it the same way.

The sum is taken in the pre-hook, before the fused (in-place) add-norm can modify its inputs.

:class:`VLLMHidden` (driver side) runs prefill-only requests (``max_tokens=1``), one sequence per
engine step (``max_num_seqs=1``, prefix caching off, eager mode), so each captured forward is exactly
one whole sequence, in submission order. The worker writes the captured hidden states of a batch to a
safetensors file that the driver reads back into the shard (no pickling crosses the process boundary).

What vLLM does NOT give here: entropy, top-1, NLL and the skip-band labels need full-vocabulary
log-probabilities at every position and a forward with MLPs skipped; ``sedac collect --backend vllm``
computes those with the HF backend on the same tokens.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


class CollectWorker:
    """Worker extension: capture the residual stream at given layers (see module doc)."""

    def sedac_start_capture(self, layers: list[int]) -> int:
        from sedac.adapter import adapt

        self.sedac_stop_capture()
        model = self.model_runner.get_model()
        parts = adapt(model)
        self._sedac_layers = list(layers)
        self._sedac_chunks: dict[int, list] = {L: [] for L in layers}
        self._sedac_handles = []
        for L in layers:
            mod = parts.layers[L] if L < parts.num_layers else parts.final_norm
            self._sedac_handles.append(mod.register_forward_pre_hook(self._sedac_hook(L, L == parts.num_layers)))
        return parts.num_layers

    def _sedac_hook(self, L: int, is_norm: bool):
        def fn(module, args):
            if is_norm:
                h, res = args[0], (args[1] if len(args) > 1 else None)
            else:
                h, res = args[1], args[2]  # (positions, hidden_states, residual)
            stream = h.float() if res is None else h.float() + res.float()
            self._sedac_chunks[L].append(stream.detach().cpu().clone())
        return fn

    def sedac_dump(self, path: str) -> list[int]:
        """Write ``hidden.{L}`` [N, d] float32 and ``lens`` (tokens per forward) to ``path``; clear."""
        import torch
        from safetensors.torch import save_file

        L0 = self._sedac_layers[0]
        lens = [int(c.shape[0]) for c in self._sedac_chunks[L0]]
        tensors = {f"hidden.{L}": torch.cat(c) for L, c in self._sedac_chunks.items()}
        tensors["lens"] = torch.tensor(lens, dtype=torch.int64)
        save_file(tensors, path)
        for c in self._sedac_chunks.values():
            c.clear()
        return lens

    def sedac_stop_capture(self) -> None:
        for h in getattr(self, "_sedac_handles", []):
            h.remove()
        self._sedac_handles = []


class VLLMHidden:
    """Driver: a vLLM engine with :class:`CollectWorker` returning hidden states per sequence."""

    def __init__(self, model: str, layers: list[int], max_len: int, dtype: str = "float32"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        from sedac.models.registry import resolve_model

        self.layers = list(layers)
        self.llm = LLM(model=str(resolve_model(model)), dtype=dtype, enforce_eager=True,
                       max_model_len=max_len + 8, max_num_seqs=1, max_num_batched_tokens=max(max_len + 8, 2048),
                       enable_prefix_caching=False, seed=0,
                       worker_extension_cls="sedac.collect.vllm_worker.CollectWorker")
        self.llm.collective_rpc("sedac_start_capture", args=(self.layers,))
        self._tmp = tempfile.TemporaryDirectory(prefix="sedac-vllm-")

    def model_fingerprint(self) -> dict[str, Any]:
        from sedac.adapter import fingerprint_from_config

        return fingerprint_from_config(self.llm.llm_engine.model_config.hf_config)

    def hidden(self, seqs: list[list[int]], dtype: Any = None) -> list[dict[str, Any]]:
        """``[{"hidden.{L}": [n_i, d]}]`` for each sequence (teacher-forced prefill); float16 unless ``dtype``."""
        import torch
        from safetensors.torch import load_file
        from vllm import SamplingParams

        from sedac.errors import ModelError

        prompts = [{"prompt_token_ids": list(s)} for s in seqs]
        self.llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)
        path = str(Path(self._tmp.name) / "hidden.safetensors")
        self.llm.collective_rpc("sedac_dump", args=(path,))
        t = load_file(path)
        lens = t["lens"].tolist()
        if lens != [len(s) for s in seqs]:
            raise ModelError(f"vLLM forwards covered {lens} tokens, expected {[len(s) for s in seqs]} "
                             "(one whole sequence per step); cannot align hidden states")
        out = [{} for _ in seqs]
        for L in self.layers:
            for i, chunk in enumerate(torch.split(t[f"hidden.{L}"], lens)):
                out[i][f"hidden.{L}"] = chunk.to(dtype or torch.float16)
        return out

    def close(self) -> None:
        self.llm.collective_rpc("sedac_stop_capture")
        self._tmp.cleanup()
        del self.llm
