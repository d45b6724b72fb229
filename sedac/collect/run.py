"""Orchestration of ``sedac collect``: data -> (generate) -> features -> shards, resumable.

Contract:

* Sequences are processed in fixed batches ``[k*B, (k+1)*B)`` of the global sequence list and a shard
  is flushed only at a batch boundary once it holds ``>= shard_tokens`` tokens, so an interrupted and
  resumed run sees exactly the same batches as an uninterrupted one and writes identical shards.
* Each shard is written atomically (temp file + ``os.replace``) and the manifest is rewritten after
  it; on resume, sequences in shards the manifest lists are skipped, stray later shard files are
  ignored and overwritten, and the data-defining config, model and dataset fingerprints must match.
* The MLP-input magnitude histogram (:mod:`sedac.collect.soft`) is a running sum over the batches of
  the flushed shards: after shard ``k`` is written, the sum through shard ``k`` goes to a new file
  ``soft_hist-<k+1>.safetensors``, then the manifest naming it (with its sha256) is written, then the
  previous file is deleted. A resumed run restarts from the sum the manifest names, so it adds
  exactly the batches an uninterrupted run adds after that point; at the end the sum is written to
  ``soft_hist.safetensors`` and the numbered files are removed. The soft-label table is fixed by the
  first batch, written to ``soft_label_table.safetensors`` and reloaded (never recomputed) on resume.
* With ``SOURCE_DATE_EPOCH`` set, shards and manifest are byte-identical across runs with the same
  inputs (provenance timestamps honour it; nothing else depends on time or paths).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sedac.collect.config import CollectConfig
from sedac.collect.shards import FORMAT, VERSION, read_manifest, shard_name, write_manifest, write_shard
from sedac.errors import ConfigError


class SimulatedInterruption(RuntimeError):
    """Raised by the ``fail_after_shards`` testing hook."""


def _check_resume(m: dict[str, Any], cfg_json: dict, model_fp: dict, data_fp: str, out: Path) -> None:
    diffs = [f"{k}: {m['config'].get(k)!r} in the manifest vs {v!r} now"
             for k, v in cfg_json.items() if m["config"].get(k) != v]
    if m.get("model_fingerprint") != model_fp:
        diffs.append("model fingerprint differs")
    if m.get("dataset_fingerprint") != data_fp:
        diffs.append("dataset fingerprint differs (different data, tokenizer, --limit or --max-length)")
    if diffs:
        raise ConfigError(f"{out} holds a collection with a different config ({'; '.join(diffs)}); "
                          "use another --out, or --no-resume to overwrite it")


def _clear(out: Path) -> None:
    from sedac.collect.soft import LABEL_TABLE_FILE

    for p in (list(out.glob("shard-*.safetensors")) + list(out.glob("soft_hist*.safetensors"))
              + [out / LABEL_TABLE_FILE, out / "manifest.json"]):
        if p.exists():
            p.unlink()


def _concat(rows: list[dict]) -> dict:
    import torch

    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def collect(cfg: CollectConfig, vllm_engine: Any = None) -> dict[str, Any]:
    """Run a collection described by ``cfg``; returns the final manifest.

    ``vllm_engine``: an existing :class:`sedac.collect.vllm_worker.VLLMHidden` to use (and not close)
    with ``backend="vllm"`` (tests share one engine); by default one is started and closed here."""
    import torch

    from sedac.adapter import adapt
    from sedac.collect.data import load_sequences
    from sedac.models.loading import load_hf
    from sedac.models.registry import DEFAULT_MODEL
    from sedac.provenance import provenance

    model_name = cfg.model or DEFAULT_MODEL
    model, tok = load_hf(model_name, dtype=cfg.dtype, device=cfg.device)
    parts = adapt(model)
    cfg.validate_model(parts.num_layers)
    seqs, data_fp = load_sequences(cfg, tok)
    cfg_json = dict(cfg.identity(), model=model_name)
    out = cfg.out_path
    out.mkdir(parents=True, exist_ok=True)

    m = read_manifest(out)
    if m is not None and not cfg.resume:
        _clear(out)
        m = None
    if m is not None:
        _check_resume(m, cfg_json, parts.fingerprint, data_fp, out)
        if m["complete"]:
            return m
    shards = list(m["shards"]) if m else []
    start = sum(s["n_sequences"] for s in shards)
    manifest = {
        "format": FORMAT, "version": VERSION, "config": cfg_json, "model_fingerprint": parts.fingerprint,
        "dataset_fingerprint": data_fp, "layers": cfg.layers, "bands": [list(b) for b in cfg.bands],
        "hidden_dtype": "float16", "shards": shards, "complete": False,
        "provenance": provenance(None, backend=cfg.backend, torch_version=torch.__version__,
                                 n_sequences_total=len(seqs)),
    }
    soft = _soft_state(cfg, parts.num_layers, m if shards else None, manifest, out)

    vhid = vllm_engine if cfg.backend == "vllm" else None
    own_engine = vhid is None and cfg.backend == "vllm"
    if own_engine:
        from sedac.collect.vllm_worker import VLLMHidden

        vhid = VLLMHidden(model_name, cfg.layers, max_len=cfg.max_length, dtype=cfg.dtype)
    if vhid is not None and list(vhid.layers) != cfg.layers:
        raise ConfigError(f"the vLLM engine captures layers {vhid.layers}, the config asks for {cfg.layers}")
    try:
        _loop(cfg, model, tok, parts, seqs, start, shards, manifest, vhid, soft)
    finally:
        if own_engine:
            vhid.close()
    from sedac.collect.soft import stale_hist_files, write_hist

    manifest["n_tokens"] = sum(s["n_tokens"] for s in shards)
    manifest["n_sequences"] = sum(s["n_sequences"] for s in shards)
    manifest["soft_hist"] = write_hist(out, soft.total.counts, len(shards), final=True)
    manifest["complete"] = True
    write_manifest(out, manifest)
    for p in stale_hist_files(out, manifest["soft_hist"]["file"]):
        p.unlink()
    return manifest


def _soft_state(cfg: CollectConfig, num_layers: int, m: dict | None, manifest: dict, out: Path):
    """The run's :class:`SoftCollector`, restored from the manifest ``m`` of a resumed partial run."""
    from sedac.collect.soft import SoftCollector, read_hist, read_label_table

    total = table = None
    if m is not None:
        total = read_hist(out, m)
        if total is None:
            raise ConfigError(f"{out} was collected without magnitude histograms (older sedac); "
                              "use another --out, or --no-resume to overwrite it")
        manifest["soft_hist"] = m["soft_hist"]
        if cfg.soft_levels:
            table = read_label_table(out, m)
            if table is None:
                raise ConfigError(f"{out} lacks the soft-label table; use --no-resume to start over")
            manifest["soft_labels"] = m["soft_labels"]
    if cfg.soft_levels and "soft_labels" not in manifest:
        from sedac.collect.soft import soft_key

        manifest["soft_labels"] = {
            "levels": list(cfg.soft_levels), "names": [soft_key(s) for s in cfg.soft_levels],
            "params": {"family": "uniform", "a_x": 1.0, "a_h": 1.0},
            "table_from": f"histogram of the first batch (sequences 0..{cfg.batch_size - 1})",
        }
    return SoftCollector(num_layers, cfg.soft_levels, total=total, table=table)


def _loop(cfg: CollectConfig, model, tok, parts, seqs, start: int, shards: list, manifest: dict, vhid,
          soft) -> None:
    """Process batches from sequence ``start`` on, flushing shards (see module doc)."""
    import torch

    from sedac.collect import hf as H
    from sedac.collect.progress import Progress
    from sedac.collect.soft import stale_hist_files, write_hist, write_label_table

    out = cfg.out_path

    pad = tok.pad_token_id
    pending: list[dict] = []
    pending_tokens = 0
    n_done_tokens = sum(s["n_tokens"] for s in shards)

    def flush() -> None:
        nonlocal pending, pending_tokens
        entry = write_shard(out, len(shards), _concat(pending), int(pending[0]["seq_id"][0]),
                            int(pending[-1]["seq_id"][0]))
        shards.append(entry)
        manifest["n_tokens"] = sum(s["n_tokens"] for s in shards)
        manifest["n_sequences"] = sum(s["n_sequences"] for s in shards)
        manifest["soft_hist"] = write_hist(out, soft.total.counts, len(shards), final=False)
        write_manifest(out, manifest)
        for p in stale_hist_files(out, manifest["soft_hist"]["file"]):
            p.unlink()
        pending, pending_tokens = [], 0
        if cfg.fail_after_shards is not None and len(shards) >= cfg.fail_after_shards:
            raise SimulatedInterruption(f"simulated interruption after {len(shards)} shards")

    base_tokens = n_done_tokens
    t0 = time.perf_counter()
    with Progress(total=len(seqs), done=start, enabled=cfg.progress) as bar:
        for b0 in range(start, len(seqs), cfg.batch_size):
            batch = seqs[b0: b0 + cfg.batch_size]
            ids = [s.ids for s in batch]
            if cfg.mode == "generate":
                if cfg.gen_batching == "batch":
                    conts = H.generate(model, tok, ids, cfg.new_tokens, cfg.temperature, cfg.seed + b0)
                else:
                    conts = [H.generate(model, tok, [p], cfg.new_tokens, cfg.temperature, cfg.seed + b0 + j)[0]
                             for j, p in enumerate(ids)]
                ids = [(p + c)[: cfg.max_length] for p, c in zip(ids, conts)]
            feats = H.token_features(model, parts, ids, cfg.layers, cfg.bands, pad, want_hidden=vhid is None,
                                     soft=soft)
            soft.end_batch()
            if soft.table is not None and "table" not in manifest["soft_labels"]:
                manifest["soft_labels"]["table"] = write_label_table(out, soft.table)
            if vhid is not None:
                for f, h in zip(feats, vhid.hidden(ids)):
                    f.update(h)
            for j, (s, f) in enumerate(zip(batch, feats)):
                n = f["pos"].shape[0]
                f["seq_id"] = torch.full((n,), b0 + j, dtype=torch.int64)
                f["is_prompt"] = (f["pos"] < s.n_prompt).to(torch.uint8)
                pending.append(f)
                pending_tokens += n
                n_done_tokens += n
            bar.update(len(batch), n_done_tokens - base_tokens, time.perf_counter() - t0)
            if pending_tokens >= cfg.shard_tokens:
                flush()
        if pending:
            flush()
