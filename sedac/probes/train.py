"""``sedac train-probe``: train a probe on collected shards with Lightning and export it.

Pipeline (:func:`train_probe`): load shards (:mod:`sedac.probes.datamodule`) -> split by sequence
-> standardisation statistics on the train split only -> Lightning fit (early stopping on
``val_loss``, weights-only safetensors checkpoints, CSV logs, all under ``<out stem>.run/``) ->
restore the best epoch -> final validation metrics + the skip-score comparison
(:func:`skip_comparison`) -> ``probe.safetensors`` via :class:`sedac.probes.Probe`.

Labels: per band ``keep_top1.A-B`` (``--band``), or the soft-skip label ``keep_top1.soft@s``
(``--soft-level s``; the probe's band is then ``[layer, num_layers - 1]``, the layers a probe at
``layer`` controls, and ``training.label = "soft@s"``). When every data directory carries
magnitude histograms (``soft_hist.safetensors``), their sum becomes the probe's soft-skip table
(:func:`sedac.runtime.soft.table_from_histograms`, ``soft.source = "collect"``) for any label.

Determinism: ``seed_everything(seed)``, ``deterministic=True``, ``num_workers=0``, a seeded
sampler; with ``SOURCE_DATE_EPOCH`` set, a rerun writes a byte-identical probe (tested).
"""

from __future__ import annotations

import json

import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedac.errors import ConfigError, DataError
RUN_MARKER = ".sedac-train-run"
SKIP_PRECISION = 0.99


def parse_band(text: str) -> list[int]:
    try:
        a, b = (int(x) for x in str(text).split("-"))
    except ValueError:
        raise ConfigError(f"--band {text!r}: expected A-B with integers A <= B (e.g. 20-27)") from None
    if a > b or a < 0:
        raise ConfigError(f"--band {text!r}: expected 0 <= A <= B")
    return [a, b]


@dataclass
class TrainProbeConfig:
    """Everything ``sedac train-probe`` needs; each field is one flag."""

    data: list[str]  #: --data: shard directories (same model fingerprint and layer)
    layer: int  #: --layer: probe layer (residual stream entering this decoder layer)
    bands: list[str] | None = None  #: --band A-B (repeatable); None = every band in the manifest
    soft_level: float | None = None  #: --soft-level s: train on keep_top1.soft@s instead of bands
    target: str = "safety"  #: --target: safety | entropy | both
    head: str = "linear"  #: --head: linear | lowrank
    rank: int | None = None  #: --rank: low-rank head rank (default 16 for lowrank)
    out: str = "probe.safetensors"  #: --out: probe file; the run dir is <out without suffix>.run/
    seed: int = 0  #: --seed
    max_epochs: int = 20  #: --max-epochs
    batch_size: int = 1024  #: --batch-size
    lr: float = 1e-3  #: --lr (AdamW)
    weight_decay: float = 1e-4  #: --weight-decay (AdamW)
    val_fraction: float = 0.2  #: --val-fraction: fraction of SEQUENCES held out
    patience: int = 3  #: --patience: early-stopping epochs without val_loss improvement
    score_target: str | None = None  #: --score-target: drives decisions when both (default safety)
    entropy_loss: str = "huber"  #: --entropy-loss: huber | mse
    compare: bool = True  #: --compare/--no-compare: skip-score comparison on the validation split
    max_hidden_gib: float = 8.0  #: --max-hidden-gib: refuse data whose float16 hidden states exceed this
    accelerator: str = "cpu"  #: --accelerator: Lightning accelerator (cpu | gpu | auto)
    progress: bool = True  #: --progress/--no-progress

    def __post_init__(self) -> None:
        self.data = [str(d) for d in (self.data or [])]
        if not self.data:
            raise ConfigError("--data: give at least one shard directory")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ConfigError(f"--layer must be a non-negative integer, got {self.layer!r}")
        if self.bands is not None:
            self.bands = [f"{a}-{b}" for a, b in (parse_band(x) for x in self.bands)] or None
            for name in self.bands or []:
                if parse_band(name)[0] < self.layer:
                    raise ConfigError(f"--band {name} starts before --layer {self.layer} (bands need A >= layer)")
        if self.soft_level is not None:
            if self.bands is not None:
                raise ConfigError("--soft-level and --band are alternatives; give one of them")
            s = self.soft_level
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 < float(s) <= 1.0:
                raise ConfigError(f"--soft-level must be a number in (0, 1], got {s!r}")
            self.soft_level = float(s)
        if self.target not in ("safety", "entropy", "both"):
            raise ConfigError(f"--target must be safety, entropy or both, got {self.target!r}")
        if self.head not in ("linear", "lowrank"):
            raise ConfigError(f"--head must be linear or lowrank, got {self.head!r}")
        if self.head == "lowrank":
            self.rank = 16 if self.rank is None else self.rank
            if not isinstance(self.rank, int) or self.rank < 1:
                raise ConfigError(f"--rank must be a positive integer, got {self.rank!r}")
        else:
            self.rank = None
        default_score = "entropy" if self.target == "entropy" else "safety"
        self.score_target = self.score_target or default_score
        if self.score_target not in self.targets:
            raise ConfigError(f"--score-target {self.score_target} is not trained by --target {self.target}")
        for name, val, lo in (("--max-epochs", self.max_epochs, 1), ("--batch-size", self.batch_size, 1),
                              ("--patience", self.patience, 0)):
            if not isinstance(val, int) or val < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {val!r}")
        for name, val in (("--lr", self.lr), ("--max-hidden-gib", self.max_hidden_gib)):
            if not (isinstance(val, (int, float)) and val > 0 and math.isfinite(val)):
                raise ConfigError(f"{name} must be a positive number, got {val!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        if not (0 < self.val_fraction < 1):
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.entropy_loss not in ("huber", "mse"):
            raise ConfigError(f"--entropy-loss must be huber or mse, got {self.entropy_loss!r}")
        if not str(self.out).endswith(".safetensors"):
            raise ConfigError(f"--out must end in .safetensors, got {self.out!r}")

    @property
    def targets(self) -> list[str]:
        return ["entropy", "safety"] if self.target == "both" else [self.target]

    @property
    def run_dir(self) -> Path:
        return Path(self.out).with_suffix(".run")


@dataclass
class TrainResult:
    path: Path  #: the written probe
    probe: Any  #: the :class:`sedac.probes.Probe`
    metrics: dict[str, Any]  #: final validation metrics (best epoch)
    comparison: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  #: the probe's ``meta.training``
    module: Any = None  #: the trained :class:`ProbeModule` (best epoch restored), on CPU


def _prepare_run_dir(run_dir: Path) -> None:
    if run_dir.exists():
        if not (run_dir / RUN_MARKER).exists():
            raise ConfigError(f"run directory {run_dir} exists and was not made by sedac train-probe; "
                              "move it away or choose another --out")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / RUN_MARKER).write_text("sedac train-probe run directory (checkpoints, CSV logs)\n")


def _safetensors_checkpoint_io():
    """Lightning CheckpointIO writing weights-only safetensors checkpoints (never pickle)."""
    from lightning.pytorch.plugins.io import CheckpointIO
    from safetensors.torch import load_file, save_file

    class SafetensorsCheckpointIO(CheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            # one metadata key: safetensors does not keep the order of several, which breaks byte-identity
            meta = {"lightning": json.dumps({k: checkpoint.get(k) for k in ("epoch", "global_step")},
                                            sort_keys=True, default=str)}
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in checkpoint["state_dict"].items()},
                      str(path), metadata=meta)

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return {"state_dict": load_file(str(path))}

        def remove_checkpoint(self, path):
            Path(path).unlink(missing_ok=True)

    return SafetensorsCheckpointIO()


def _predict(module, hidden, batch_size: int = 8192):
    import torch

    module.eval()
    with torch.no_grad():
        return torch.cat([module(hidden[i:i + batch_size]) for i in range(0, hidden.shape[0], batch_size)])


def _fit(module, dm, cfg: TrainProbeConfig) -> tuple[int | None, int]:
    """Lightning fit with early stopping, safetensors checkpoints and CSV logs in ``cfg.run_dir``.

    Restores the best (lowest ``val_loss``) epoch's weights into ``module``; returns
    ``(best_epoch, epochs_run)``.
    """
    import logging

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from safetensors import safe_open
    from safetensors.torch import load_file

    run_dir = cfg.run_dir
    _prepare_run_dir(run_dir)
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val_loss", mode="min",
                           save_top_k=1, save_last=False)
    ckpt.FILE_EXTENSION = ".safetensors"
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    trainer = pl.Trainer(
        max_epochs=cfg.max_epochs, accelerator=cfg.accelerator, devices=1, deterministic=True,
        logger=CSVLogger(str(run_dir), name="logs", version=0),
        callbacks=[EarlyStopping(monitor="val_loss", mode="min", patience=cfg.patience), ckpt],
        plugins=[_safetensors_checkpoint_io()], enable_progress_bar=cfg.progress, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=str(run_dir),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
        try:
            trainer.fit(module, datamodule=dm)
        finally:
            for lg, lvl in zip(quiet, levels):
                lg.setLevel(lvl)
    best_epoch = None
    if ckpt.best_model_path and Path(ckpt.best_model_path).is_file():
        module.load_state_dict(load_file(ckpt.best_model_path))
        with safe_open(ckpt.best_model_path, framework="pt") as f:
            best_epoch = int(f.metadata().get("epoch", -1))
    return best_epoch, int(trainer.current_epoch)


def train_probe(cfg: TrainProbeConfig, console=None) -> TrainResult:
    """Train, export and summarise one probe (see the module docstring for the pipeline)."""
    import lightning.pytorch as pl
    import torch

    from sedac.probes import Probe, ProbeMeta
    from sedac.probes.datamodule import ProbeDataModule, load_probe_data, split_by_sequence, train_norm_stats
    from sedac.probes.lightning_module import ProbeModule
    from sedac.provenance import provenance

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    bands = [parse_band(b) for b in cfg.bands] if cfg.bands else None
    data = load_probe_data(cfg.data, cfg.layer, bands, cfg.max_hidden_gib, soft_level=cfg.soft_level)
    bands = data.bands
    n_layers = int(data.model_fingerprint.get("num_layers") or 0)
    for b in bands:
        if b[0] < cfg.layer:
            raise ConfigError(f"--band {b[0]}-{b[1]} starts before --layer {cfg.layer}; pass --band explicitly")
        if n_layers and b[1] >= n_layers:
            raise DataError(f"band {b[0]}-{b[1]} is beyond the model's {n_layers} layers")
    val_mask = split_by_sequence(data.seq_key, cfg.val_fraction, cfg.seed)
    n_train_seqs = int(torch.unique(data.seq_key[~val_mask]).numel())
    n_val_seqs = int(torch.unique(data.seq_key[val_mask]).numel())
    dm = ProbeDataModule(data, val_mask, cfg.batch_size, cfg.seed)
    data.hidden = None  # the datamodule holds the split copies
    h_tr, e_tr, k_tr = dm.train_set.tensors
    h_va, e_va, k_va = dm.val_set.tensors
    mean, std = train_norm_stats(h_tr)

    meta = ProbeMeta(model_fingerprint=data.model_fingerprint, layer=cfg.layer, bands=bands, head=cfg.head,
                     rank=cfg.rank, targets=cfg.targets, score_target=cfg.score_target)
    band_names = [f"{a}-{b}" for a, b in bands]
    label_names = data.label_names
    init_bias = []
    if "entropy" in cfg.targets:
        init_bias.append(e_tr.mean())
    if "safety" in cfg.targets:
        p = k_tr.mean(0).clamp(1e-4, 1 - 1e-4)
        init_bias += list(torch.log(p / (1 - p)))
    module = ProbeModule(d=h_tr.shape[1], outputs=meta.outputs, band_names=band_names, head=cfg.head,
                         rank=cfg.rank, lr=cfg.lr, weight_decay=cfg.weight_decay, entropy_loss=cfg.entropy_loss,
                         mean=mean, std=std, init_bias=torch.stack([torch.as_tensor(x) for x in init_bias]))

    best_epoch, epochs_run = _fit(module, dm, cfg)
    module.cpu()

    out_va = _predict(module, h_va)
    module.update_metrics(out_va, e_va, k_va)
    metrics = nan_to_none({k: float(v) for k, v in module.compute_val_metrics().items()})
    comparison = {}
    if cfg.compare:
        comparison = skip_comparison(probe_eval_scores(meta.outputs, band_names, out_va, e_va), k_va, label_names)

    meta.training = {
        "label": label_names[0] if cfg.soft_level is not None else "band",
        "metrics": metrics, "comparison": comparison,
        "n_train_tokens": int(h_tr.shape[0]), "n_val_tokens": int(h_va.shape[0]),
        "n_train_seqs": n_train_seqs, "n_val_seqs": n_val_seqs,
        "split": {"unit": "sequence", "seed": cfg.seed, "val_fraction": cfg.val_fraction},
        "best_epoch": best_epoch, "epochs_run": epochs_run,
        "loss": {"entropy": cfg.entropy_loss if "entropy" in cfg.targets else None,
                 "safety": "bce" if "safety" in cfg.targets else None},
        "train_keep_rate": {n: float(k_tr[:, j].mean()) for j, n in enumerate(label_names)},
    }
    meta.provenance = provenance(cfg, data_fingerprints=data.data_fingerprints)
    probe = Probe(meta, module.net.probe_tensors())
    if data.soft_counts is not None:
        from sedac.runtime.soft import table_from_histograms

        probe.set_soft_table(table_from_histograms(data.soft_counts), "collect")
    path = probe.save(cfg.out)
    result = TrainResult(path=path, probe=probe, metrics=metrics, comparison=comparison, training=meta.training,
                         module=module)
    if console is not None:
        print_summary(result, console)
    return result


def print_summary(result: TrainResult, console) -> None:
    """Rich tables: data/split sizes, final validation metrics, and the skip-score comparison."""
    from rich.table import Table

    t = result.training
    tab = Table(title=f"probe {result.path}  (layer {result.probe.layer}, {result.probe.meta.head}, "
                      f"score={result.probe.meta.score_target})")
    tab.add_column("quantity")
    tab.add_column("value", justify="right")
    for k in ("n_train_tokens", "n_val_tokens", "n_train_seqs", "n_val_seqs", "best_epoch", "epochs_run"):
        tab.add_row(k, str(t.get(k)))
    for k, v in sorted(result.metrics.items()):
        tab.add_row(k, "n/a" if v is None else f"{v:.4f}")
    console.print(tab)
    if result.comparison:
        print_comparison(result.comparison, console)


def print_comparison(comparison: dict[str, Any], console) -> None:
    from rich.table import Table

    tab = Table(title="skip-safety on the validation split: who ranks safe tokens best? "
                      "(frac@P99 = share of ALL tokens skippable with precision >= 0.99, oracle threshold)")
    for c in ("band", "keep rate", "scorer", "AUROC", "frac@P99"):
        tab.add_column(c, justify="right" if c not in ("band", "scorer") else "left")
    for band, row in comparison.items():
        for scorer, m in row["scorers"].items():
            auc = "n/a" if m["auroc"] is None else f"{m['auroc']:.4f}"
            tab.add_row(band, f"{row['keep_rate']:.4f}", scorer, auc, f"{m['frac_at_precision']:.4f}")
    console.print(tab)


# ----------------------------------------------------------------------------- evaluation helpers
def nan_to_none(d: dict[str, float]) -> dict[str, float | None]:
    """JSON-safe metrics (the probe header refuses NaN): NaN/Inf -> None."""
    return {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in d.items()}


def auroc(score, y) -> float | None:
    """Exact AUROC (Mann-Whitney, ties count 1/2) in float64; None when ``y`` has one class."""
    import numpy as np

    s = np.asarray(score, dtype=np.float64)
    yy = np.asarray(y).astype(bool)
    n_pos, n_neg = int(yy.sum()), int((~yy).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # first index of each tie group
    ends = np.r_[starts[1:], s.size]
    group_rank = (starts + 1 + ends) / 2.0  # average 1-based rank of the group
    r = np.empty(s.size)
    r[order] = np.repeat(group_rank, ends - starts)
    return float((r[yy].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def frac_at_precision(score, y, precision: float = SKIP_PRECISION) -> tuple[float, float | None]:
    """Largest share of ALL tokens selectable by ``score >= t`` while precision(safe) >= ``precision``.

    Thresholds are taken between distinct score values (ties are selected together). Returns
    ``(fraction, threshold)``; ``(0.0, None)`` when no threshold reaches the precision. This is an
    in-sample oracle threshold, a descriptive figure, not a certified one (``sedac calibrate`` is).
    """
    import numpy as np

    s = np.asarray(score, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    n = s.shape[0]
    if n == 0:
        return 0.0, None
    order = np.argsort(-s, kind="stable")
    s_sorted, tp = s[order], np.cumsum(yy[order])
    boundary = np.append(s_sorted[1:] != s_sorted[:-1], True)
    prec = tp / np.arange(1, n + 1)
    ok = np.nonzero(boundary & (prec >= precision))[0]
    if ok.size == 0:
        return 0.0, None
    i = int(ok[-1])
    return (i + 1) / n, float(s_sorted[i])


def probe_eval_scores(outputs: list[str], band_names: list[str], out, entropy, prefix: str = "") -> dict:
    """Skip scores ``[N, B]`` (higher = safer) to compare: true entropy and the probe's heads.

    ``"true entropy"`` = -H (the final-layer entropy, known only after the full forward: the
    ceiling for any entropy-gated method); ``"safety probe"`` = safety logit per band;
    ``"entropy probe"`` = -predicted entropy.
    """
    import torch

    B = len(band_names)
    scores = {"true entropy": (-entropy.float()).unsqueeze(1).expand(-1, B)} if not prefix else {}
    if "entropy" in outputs:
        scores[prefix + "entropy probe"] = (-out[:, outputs.index("entropy")]).unsqueeze(1).expand(-1, B)
    if any(o.startswith("safety:") for o in outputs):
        cols = [outputs.index(f"safety:{b}") if f"safety:{b}" in outputs else None for b in band_names]
        if all(c is not None for c in cols):
            scores[prefix + "safety probe"] = out[:, cols]
    return {k: torch.as_tensor(v).detach().float() for k, v in scores.items()}


def skip_comparison(scores: dict, keep, band_names: list[str], precision: float = SKIP_PRECISION) -> dict:
    """Per band and scorer: AUROC for predicting ``keep_top1`` and ``frac_at_precision``."""
    out: dict[str, Any] = {}
    for j, band in enumerate(band_names):
        y = keep[:, j].cpu().numpy()
        row = {"keep_rate": float(y.mean()), "n_tokens": int(y.shape[0]), "precision": precision, "scorers": {}}
        for name, s in scores.items():
            sj = s[:, j].cpu().numpy()
            frac, thr = frac_at_precision(sj, y, precision)
            row["scorers"][name] = {"auroc": auroc(sj, y), "frac_at_precision": frac, "threshold": thr}
        out[band] = row
    return out


def evaluate_probes(data: list[str], probes: list[str], seed: int = 0, val_fraction: float = 0.2,
                    max_hidden_gib: float = 8.0) -> dict:
    """Compare existing probes (same layer) and true entropy on the validation split of ``data``.

    Use the ``seed``/``val_fraction`` the probes were trained with, or the validation tokens were
    training tokens; a mismatch with a probe's recorded split is refused.
    """
    from sedac.probes import load_probe
    from sedac.probes.datamodule import load_probe_data, split_by_sequence

    if not probes:
        raise ConfigError("--evaluate: give at least one probe")
    loaded = [load_probe(p) for p in probes]
    layer = loaded[0].layer
    if any(p.layer != layer for p in loaded):
        raise ConfigError("--evaluate: all probes must read the same layer")
    for path, p in zip(probes, loaded):
        split = p.meta.training.get("split") or {}
        if split and (split.get("seed"), split.get("val_fraction")) != (seed, val_fraction):
            raise ConfigError(f"--evaluate {path}: trained with --seed {split.get('seed')} --val-fraction "
                              f"{split.get('val_fraction')}; pass the same values so validation tokens are unseen")
    bands = loaded[0].meta.bands
    labels = {str(p.meta.training.get("label", "band")) for p in loaded}
    if len(labels) != 1:
        raise ConfigError(f"--evaluate: the probes were trained on different labels ({', '.join(sorted(labels))})")
    label = labels.pop()
    soft_level = float(label.removeprefix("soft@")) if label.startswith("soft@") else None
    d = load_probe_data(data, layer, None if soft_level is not None else bands, max_hidden_gib, soft_level=soft_level)
    for path, p in zip(probes, loaded):
        p.check_model(d.model_fingerprint)
    val = split_by_sequence(d.seq_key, val_fraction, seed)
    h, e, k = d.hidden[val], d.entropy[val], d.keep[val]
    names = [f"{a}-{b}" for a, b in bands]
    scores = probe_eval_scores([], names, None, e)
    for path, p in zip(probes, loaded):
        out = p.outputs(h)
        scores.update(probe_eval_scores(p.meta.outputs, names, out, e, prefix=f"{Path(path).name}: "))
    return skip_comparison(scores, k, d.label_names)
