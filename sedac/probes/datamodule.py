"""Probe training data: read ``sedac collect`` shards, split by sequence, serve batches to Lightning.

Contract
--------
* Input: one or more shard directories (``manifest.json`` + ``shard-*.safetensors``, format
  ``sedac-shards`` v1). All directories must share the model fingerprint and must all contain the
  requested probe layer and skip bands.
* Every token position of every sequence is one example: ``hidden.{L}`` (the residual stream
  entering layer ``L``), the true final entropy (nats) and, per band, ``keep_top1.A-B`` — or, with
  ``soft_level=s``, the one label ``keep_top1.soft@s`` (the probe's band is then ``[L, num_layers-1]``,
  the layers a probe at ``L`` controls).
* The MLP-input magnitude histograms of the directories (``soft_hist.safetensors``) are summed into
  ``ProbeData.soft_counts`` when every directory has one (else None).
* **Split by sequence, never by token.** A sequence is ``(directory index, seq_id)``; the unique
  sequences are permuted with a generator seeded by ``seed`` and the first
  ``ceil(val_fraction * n_seqs)`` form the validation split. A sequence's tokens are therefore all
  in one split (tested).
* **Memory bound.** Hidden states are held in memory as float16: ``2 * n_tokens * d`` bytes
  (SmolLM2-135M, d=576: 1.15 KB/token, 1M tokens = 1.1 GiB) plus ~9 bytes/token of labels.
  :func:`load_probe_data` refuses data above ``max_hidden_gib`` before reading any tensor.
* Standardisation statistics are computed on the **train split only** (:func:`train_norm_stats`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from sedac.errors import DataError
from sedac.probes.format import band_name, fingerprint_mismatch


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check ``DIR/manifest.json`` (via :func:`sedac.collect.shards.open_shards`).

    Raises :class:`DataError` for a missing directory/manifest, a foreign or newer format, missing
    shard files or shards without tokens; warns (and uses the listed shards) if incomplete.
    """
    from sedac.collect.shards import open_shards

    d = Path(path)
    if not d.is_dir():
        raise DataError(f"--data {d}: no such directory (run `sedac collect --out {d}` first)")
    m, _ = open_shards(d)
    for key in ("model_fingerprint", "layers", "bands", "shards"):
        if key not in m:
            raise DataError(f"--data {d}: manifest.json lacks {key!r}")
    if not m["shards"] or sum(int(s.get("n_tokens", 0)) for s in m["shards"]) == 0:
        raise DataError(f"--data {d}: the shards hold no tokens")
    if not m.get("complete", False):
        warnings.warn(f"--data {d}: collection is marked incomplete; using the {len(m['shards'])} finished shards",
                      stacklevel=2)
    return m


def load_shard(path: Path, keys: list[str]) -> dict[str, Any]:
    """Read ``keys`` from one shard (safetensors; never pickle); DataError if missing or corrupt."""
    from sedac.collect import shards

    try:
        return shards.load_shard(path, keys)
    except DataError:
        raise
    except Exception as exc:  # safetensors raises its own types on corrupt files
        raise DataError(f"cannot read shard {path}: {type(exc).__name__}: {exc}") from None


@dataclass
class ProbeData:
    """All examples of the requested layer/bands, in memory. ``N`` tokens, ``B`` bands."""

    hidden: Any  #: [N, d] float16
    entropy: Any  #: [N] float32 (nats)
    keep: Any  #: [N, B] float32 in {0, 1}
    seq_key: Any  #: [N] int64, unique per (directory, seq_id)
    bands: list[list[int]]
    model_fingerprint: dict[str, Any]
    data_fingerprints: list[dict[str, Any]] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)  #: suffix of each keep column ("A-B" or "soft@s")
    soft_counts: Any = None  #: [L, 2, N_BINS] float64 summed magnitude histograms, or None

    @property
    def n_tokens(self) -> int:
        return int(self.hidden.shape[0])


def load_probe_data(dirs: list[str | Path], layer: int, bands: list[list[int]] | None,
                    max_hidden_gib: float = 8.0, soft_level: float | None = None) -> ProbeData:
    """Load ``hidden.{layer}``, entropy and ``keep_top1`` per band (or of ``soft_level``) from every directory.

    ``bands=None`` means every band in the first manifest. Raises :class:`DataError` for a missing
    directory, empty shards, a layer/band/soft level that was not collected, or mismatched model
    fingerprints.
    """
    import torch

    if not dirs:
        raise DataError("--data: give at least one shard directory")
    manifests = [read_manifest(d) for d in dirs]
    fp0 = manifests[0]["model_fingerprint"]
    for d, m in zip(dirs[1:], manifests[1:]):
        diffs = fingerprint_mismatch(fp0, m["model_fingerprint"])
        if diffs:
            raise DataError(f"--data {d}: collected from a different model than {dirs[0]}: "
                            + "; ".join(x.replace("probe has", "this dir has").replace("model has", "first has")
                                        for x in diffs))
    n_layers = int(fp0.get("num_layers") or 0)
    if soft_level is not None:
        from sedac.collect.soft import soft_key

        if not n_layers or layer >= n_layers:
            raise DataError(f"--soft-level needs a probe --layer below the model's {n_layers} layers, got {layer}")
        bands, label_names = [[layer, n_layers - 1]], [soft_key(soft_level)]
    else:
        if bands is None:
            bands = [list(map(int, b)) for b in manifests[0]["bands"]]
        label_names = [band_name(b) for b in bands]
    for d, m in zip(dirs, manifests):
        if layer not in [int(x) for x in m["layers"]]:
            raise DataError(f"--layer {layer} was not collected in {d} (collected layers: {m['layers']})")
        if soft_level is not None:
            have_soft = (m.get("soft_labels") or {}).get("names", [])
            if label_names[0] not in have_soft:
                raise DataError(f"--soft-level {soft_level:g} was not collected in {d} (collected soft levels: "
                                f"{', '.join(x.removeprefix('soft@') for x in have_soft) or 'none'})")
            continue
        have = {band_name(b) for b in m["bands"]}
        for b in bands:
            if band_name(b) not in have:
                raise DataError(f"--band {band_name(b)} was not collected in {d} (collected: {sorted(have)})")
    d_model = int(fp0.get("hidden_size") or 0)
    n_total = sum(int(s["n_tokens"]) for m in manifests for s in m["shards"])
    gib = 2 * n_total * max(d_model, 1) / 2**30
    if gib > max_hidden_gib:
        raise DataError(f"{n_total} tokens x d={d_model} need {gib:.1f} GiB of float16 hidden states, above "
                        f"--max-hidden-gib {max_hidden_gib}; use fewer/smaller --data directories or raise it")

    keys = [f"hidden.{layer}", "entropy", "seq_id"] + [f"keep_top1.{n}" for n in label_names]
    parts: dict[str, list] = {k: [] for k in ("hidden", "entropy", "keep", "seq_key")}
    for di, (d, m) in enumerate(zip(dirs, manifests)):
        for s in m["shards"]:
            if int(s.get("n_tokens", 0)) == 0:
                continue
            t = load_shard(Path(d) / s["file"], keys)
            h = t[f"hidden.{layer}"]
            if h.dim() != 2 or (d_model and h.shape[1] != d_model):
                raise DataError(f"shard {s['file']} in {d}: hidden.{layer} has shape {tuple(h.shape)}, "
                                f"expected [T, {d_model}]")
            parts["hidden"].append(h.to(torch.float16))
            parts["entropy"].append(t["entropy"].to(torch.float32))
            parts["keep"].append(torch.stack([t[f"keep_top1.{n}"].to(torch.float32) for n in label_names], 1))
            parts["seq_key"].append(t["seq_id"].to(torch.int64) + (di << 40))
    if not parts["hidden"]:
        raise DataError(f"--data {', '.join(map(str, dirs))}: the shards hold no tokens")
    data = ProbeData(
        hidden=torch.cat(parts["hidden"]), entropy=torch.cat(parts["entropy"]),
        keep=torch.cat(parts["keep"]), seq_key=torch.cat(parts["seq_key"]),
        bands=[list(b) for b in bands], model_fingerprint=dict(fp0),
        data_fingerprints=[{"dir": str(Path(d).resolve()), "dataset_fingerprint": m.get("dataset_fingerprint"),
                            "n_tokens": m.get("n_tokens"), "n_sequences": m.get("n_sequences"),
                            "shards_sha256": [s.get("sha256") for s in m["shards"]]}
                           for d, m in zip(dirs, manifests)],
        label_names=label_names, soft_counts=_soft_counts(dirs, manifests),
    )
    if not torch.isfinite(data.entropy).all():
        raise DataError("entropy contains NaN/Inf in the shards")
    return data


def _soft_counts(dirs, manifests):
    """Sum of the directories' magnitude histograms, or None unless every directory has one."""
    from sedac.collect.soft import read_hist

    counts = [read_hist(d, m) for d, m in zip(dirs, manifests)]
    if any(c is None for c in counts):
        return None
    if len({tuple(c.shape) for c in counts}) != 1:
        raise DataError("--data: the directories' soft_hist.safetensors have different shapes")
    return sum(counts[1:], counts[0].clone())


def split_by_sequence(seq_key, val_fraction: float, seed: int):
    """Boolean mask ``[N]``: True = validation. Whole sequences go to one side (seeded permutation)."""
    import torch

    uniq = torch.unique(seq_key)
    n = int(uniq.numel())
    if n < 2:
        raise DataError(f"need at least 2 sequences to split train/validation, got {n}")
    n_val = min(max(1, math.ceil(val_fraction * n)), n - 1)
    g = torch.Generator().manual_seed(int(seed))
    val_keys = uniq[torch.randperm(n, generator=g)[:n_val]]
    return torch.isin(seq_key, val_keys)


def train_norm_stats(hidden, chunk: int = 65536):
    """Per-feature mean and std (float32, std floored at 1e-6) of ``hidden`` in float64 chunks."""
    import torch

    s = torch.zeros(hidden.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for i in range(0, hidden.shape[0], chunk):
        x = hidden[i:i + chunk].to(torch.float64)
        s += x.sum(0)
        s2 += (x * x).sum(0)
    n = max(int(hidden.shape[0]), 1)
    mean = s / n
    var = (s2 / n - mean * mean).clamp_min(0.0)
    return mean.float(), var.sqrt().clamp_min(1e-6).float()


class _Batches:
    """Map-style dataset indexed by a *list* of rows: one tensor gather per batch, not per token."""

    def __init__(self, *tensors):
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, idx):
        import torch

        idx = torch.as_tensor(idx, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


class ProbeDataModule(pl.LightningDataModule):
    """LightningDataModule over an in-memory :class:`ProbeData` and its validation mask.

    Batches are ``(hidden [b, d] float16, entropy [b], keep [b, B])``; the train loader shuffles
    with a generator seeded by ``seed`` (reproducible epoch orders); ``num_workers=0``.
    """

    def __init__(self, data: ProbeData, val_mask, batch_size: int, seed: int):
        super().__init__()
        tr = ~val_mask
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.train_set = _Batches(data.hidden[tr], data.entropy[tr], data.keep[tr])
        self.val_set = _Batches(data.hidden[val_mask], data.entropy[val_mask], data.keep[val_mask])

    def _loader(self, ds, shuffle: bool):
        import torch
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

        if shuffle:
            sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(self.seed))
        else:
            sampler = SequentialSampler(ds)
        return DataLoader(ds, sampler=BatchSampler(sampler, self.batch_size, drop_last=False),
                          batch_size=None, num_workers=0)

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False)
