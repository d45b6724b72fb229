"""The probe as a Lightning module: heads, losses and validation metrics.

Contract
--------
* :class:`ProbeNet` computes exactly what :meth:`sedac.probes.Probe.outputs` computes:
  ``z = (h - norm.mean) / norm.std``; linear ``z @ W.T + b``; low-rank ``(z @ D.T) @ U.T + b``.
  Its parameters map 1:1 onto the probe tensors (:meth:`ProbeNet.probe_tensors`): ``norm.mean``,
  ``norm.std`` (buffers, fixed from the train split), ``head.weight`` or ``head.down``/``head.up``,
  ``head.bias``. Output columns follow ``ProbeMeta.outputs``: ``"entropy"`` first if present,
  then ``"safety:A-B"`` per band.
* Losses: entropy regression on nats (Huber, delta 1, or MSE); skip safety = BCE-with-logits on
  ``keep_top1`` per band, averaged over bands. With both targets the two losses are summed.
* Validation (torchmetrics): entropy MAE and Spearman; per band AUROC, average precision and
  expected calibration error (``BinaryCalibrationError``, 15 bins, on ``sigmoid(logit)``).
"""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F


class ProbeNet(nn.Module):
    """Standardise then a linear or low-rank head. ``forward(h [N, d]) -> [N, K]`` float32."""

    def __init__(self, d: int, n_out: int, head: str = "linear", rank: int | None = None,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.head_kind = head
        self.register_buffer("mean", torch.zeros(d) if mean is None else mean.detach().float().clone())
        self.register_buffer("std", torch.ones(d) if std is None else std.detach().float().clone())
        if head == "linear":
            self.linear = nn.Linear(d, n_out)
        elif head == "lowrank":
            if not rank or rank < 1:
                raise ValueError("low-rank head needs rank >= 1")
            self.down = nn.Linear(d, rank, bias=False)
            self.up = nn.Linear(rank, n_out)
        else:
            raise ValueError(f"unknown head {head!r}")

    @property
    def bias(self) -> nn.Parameter:
        return self.linear.bias if self.head_kind == "linear" else self.up.bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = (h.to(torch.float32) - self.mean) / self.std  # [N, d]
        if self.head_kind == "linear":
            return self.linear(z)  # [N, K]
        return self.up(self.down(z))  # [N, r] -> [N, K]

    def probe_tensors(self) -> dict[str, torch.Tensor]:
        """The probe-format tensors (float32, CPU, detached)."""
        t = {"norm.mean": self.mean, "norm.std": self.std, "head.bias": self.bias}
        if self.head_kind == "linear":
            t["head.weight"] = self.linear.weight
        else:
            t["head.down"] = self.down.weight
            t["head.up"] = self.up.weight
        return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in t.items()}


class ProbeModule(pl.LightningModule):
    """Trains a :class:`ProbeNet` on batches ``(hidden, entropy, keep [b, B])``.

    ``outputs`` are the ProbeMeta column names; ``band_names`` the bands of the ``keep`` columns.
    """

    def __init__(self, d: int, outputs: list[str], band_names: list[str], head: str = "linear",
                 rank: int | None = None, lr: float = 1e-3, weight_decay: float = 1e-4,
                 entropy_loss: str = "huber", mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                 init_bias: torch.Tensor | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["mean", "std", "init_bias"])
        self.outputs = list(outputs)
        self.band_names = list(band_names)
        self.has_entropy = "entropy" in self.outputs
        self.safety_cols = [self.outputs.index(f"safety:{b}") for b in self.band_names
                            if f"safety:{b}" in self.outputs]
        self.net = ProbeNet(d, len(self.outputs), head, rank, mean, std)
        if init_bias is not None:
            with torch.no_grad():
                self.net.bias.copy_(init_bias)
        if self.has_entropy:
            self.val_mae = torchmetrics.MeanAbsoluteError()
            with warnings.catch_warnings():  # it buffers all validation predictions: fine at our sizes
                warnings.simplefilter("ignore", UserWarning)
                self.val_spearman = torchmetrics.SpearmanCorrCoef()
        self.val_auroc = nn.ModuleList(torchmetrics.classification.BinaryAUROC() for _ in self.safety_cols)
        self.val_ap = nn.ModuleList(torchmetrics.classification.BinaryAveragePrecision() for _ in self.safety_cols)
        self.val_ece = nn.ModuleList(torchmetrics.classification.BinaryCalibrationError(n_bins=15)
                                     for _ in self.safety_cols)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)

    def _loss(self, out: torch.Tensor, entropy: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        loss = out.new_zeros(())
        if self.has_entropy:
            pred = out[:, 0]
            if self.hparams.entropy_loss == "mse":
                loss = loss + F.mse_loss(pred, entropy)
            else:
                loss = loss + F.huber_loss(pred, entropy, delta=1.0)
        if self.safety_cols:
            loss = loss + F.binary_cross_entropy_with_logits(out[:, self.safety_cols], keep)
        return loss

    def training_step(self, batch, batch_idx):
        h, entropy, keep = batch
        loss = self._loss(self(h), entropy, keep)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=h.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        h, entropy, keep = batch
        out = self(h)
        self.log("val_loss", self._loss(out, entropy, keep), on_step=False, on_epoch=True,
                 batch_size=h.shape[0])
        self.update_metrics(out, entropy, keep)

    def update_metrics(self, out: torch.Tensor, entropy: torch.Tensor, keep: torch.Tensor) -> None:
        """Accumulate validation metrics for head outputs ``out [b, K]``."""
        if self.has_entropy:
            self.val_mae.update(out[:, 0], entropy)
            self.val_spearman.update(out[:, 0], entropy)
        for j, col in enumerate(self.safety_cols):
            p, y = torch.sigmoid(out[:, col]), keep[:, j].long()
            self.val_auroc[j].update(p, y)
            self.val_ap[j].update(p, y)
            self.val_ece[j].update(p, y)

    def on_validation_epoch_end(self) -> None:
        logs = self.compute_val_metrics()
        self.log_dict(logs)

    def compute_val_metrics(self, reset: bool = True) -> dict[str, torch.Tensor]:
        """Validation metrics accumulated since the last reset (band means as ``val_auroc`` etc.)."""
        logs: dict[str, torch.Tensor] = {}
        if self.has_entropy:
            logs["val_entropy_mae"] = self.val_mae.compute()
            logs["val_entropy_spearman"] = self.val_spearman.compute()
            if reset:
                self.val_mae.reset()
                self.val_spearman.reset()
        for j, name in enumerate(self.band_names[:len(self.safety_cols)]):
            for kind, metric in (("auroc", self.val_auroc[j]), ("ap", self.val_ap[j]), ("ece", self.val_ece[j])):
                logs[f"val_{kind}_{name}"] = metric.compute()
                if reset:
                    metric.reset()
        if self.safety_cols:
            for kind in ("auroc", "ap", "ece"):
                vals = torch.stack([logs[f"val_{kind}_{n}"] for n in self.band_names])
                logs[f"val_{kind}"] = vals.mean()
        return logs

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
