"""The :class:`Probe` object: load/save, validation against a model, and the scoring math.

The same object serves training export, calibration and every runtime backend, so a probe scores a
hidden state identically everywhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sedac.errors import ProbeError
from sedac.probes.format import (
    FORMAT_VERSION,
    ProbeMeta,
    band_name,
    fingerprint_int,
    fingerprint_mismatch,
    read_probe_file,
    save_probe_file,
)


class Probe:
    """A loaded probe: metadata plus float32 CPU tensors (see :mod:`sedac.probes.format`)."""

    def __init__(self, meta: ProbeMeta, tensors: dict[str, Any]):
        meta.validate(check_layers=False)  # range: load_probe / check_model / save
        self.meta = meta
        self.tensors = tensors
        self._folded: dict[tuple, tuple[Any, Any]] = {}

    # ----------------------------------------------------------------- properties
    @property
    def layer(self) -> int:
        return self.meta.layer

    @property
    def bands(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in self.meta.bands]

    @property
    def band_names(self) -> list[str]:
        return [band_name(b) for b in self.bands]

    @property
    def hidden_size(self) -> int:
        return int(self.tensors["norm.mean"].shape[0])

    @property
    def is_calibrated(self) -> bool:
        return bool(self.meta.calibration.get("thresholds"))

    # ----------------------------------------------------------------- math
    def outputs(self, h):
        """Head outputs ``[N, K]`` (columns = ``meta.outputs``) for hidden states ``h: [N, d]``."""
        import torch

        t = self.tensors
        z = (h.to(torch.float32) - t["norm.mean"].to(h.device)) / t["norm.std"].to(h.device)
        if self.meta.head == "linear":
            return z @ t["head.weight"].to(h.device).T + t["head.bias"].to(h.device)
        return (z @ t["head.down"].to(h.device).T) @ t["head.up"].to(h.device).T + t["head.bias"].to(h.device)

    def raw_score_weights(self, device=None, dtype=None):
        """Folded affine map ``raw = h @ W.T + b`` with ``W: [B, d]``, one row per band.

        Normalisation and the low-rank factors are folded in, so the runtime does one tiny GEMV.
        ``score = sigmoid(raw)`` for the safety target and ``score = raw`` (= -entropy) for entropy;
        both are monotone in ``raw``, so thresholds are compared in raw space (:meth:`raw_threshold`).
        """
        import torch

        key = (str(device), str(dtype))
        if key not in self._folded:
            t = self.tensors
            if self.meta.head == "linear":
                w = t["head.weight"].double()
            else:
                w = t["head.up"].double() @ t["head.down"].double()
            w = w / t["norm.std"].double()
            b = t["head.bias"].double() - w @ t["norm.mean"].double()
            cols = self.meta.outputs
            if self.meta.score_target == "safety":
                idx = [cols.index(f"safety:{n}") for n in self.band_names]
                W, B = w[idx], b[idx]
            else:
                i = cols.index("entropy")
                W = -w[i].unsqueeze(0).expand(len(self.bands), -1)
                B = -b[i].expand(len(self.bands))
            self._folded[key] = (
                W.to(device=device, dtype=dtype or torch.float32).contiguous(),
                B.to(device=device, dtype=torch.float32).contiguous(),
            )
        return self._folded[key]

    def raw_scores(self, h):
        """Raw (monotone) skip scores ``[N, B]``; see :meth:`raw_score_weights`."""
        import torch

        W, b = self.raw_score_weights(h.device, h.dtype)
        return (h @ W.T).to(torch.float32) + b

    def scores(self, h):
        """Skip scores ``[N, B]``: P(safe) for the safety target, -entropy (nats) for entropy."""
        import torch

        raw = self.raw_scores(h)
        return torch.sigmoid(raw) if self.meta.score_target == "safety" else raw

    def raw_threshold(self, score_threshold: float) -> float:
        """Map a threshold on :meth:`scores` to the equivalent threshold on :meth:`raw_scores`."""
        if self.meta.score_target != "safety":
            return float(score_threshold)
        p = float(score_threshold)
        if p <= 0.0:
            return -math.inf
        if p >= 1.0:
            return math.inf
        return math.log(p / (1.0 - p))

    def soft_table(self):
        """The soft-skip quantile table ``[L, 2, Q]`` (float32, with the implied 0 / +inf ends) or None."""
        import torch

        t = self.tensors.get("soft.table")
        if t is None:
            return None
        n, m, _ = t.shape  # explicit device: vLLM builds models under a default-device (cuda) context
        return torch.cat([torch.zeros(n, m, 1, device=t.device), t.float(),
                          torch.full((n, m, 1), math.inf, device=t.device)], -1)

    def set_soft_table(self, table, source: str) -> None:
        """Store a ``[L, 2, Q]`` table (from :func:`sedac.runtime.soft.table_from_histograms`)."""
        self.tensors["soft.table"] = table[..., 1:-1].detach().to("cpu").float().contiguous()
        self.meta.soft = {"quantiles": int(table.shape[-1]), "source": source}
        self.meta.format_version = FORMAT_VERSION

    # ----------------------------------------------------------------- io
    def save(self, path: str | Path) -> Path:
        return save_probe_file(path, self.meta, self.tensors)

    def check_model(self, fingerprint: dict[str, Any]) -> None:
        diffs = fingerprint_mismatch(fingerprint, self.meta.model_fingerprint)
        if diffs:
            raise ProbeError("probe was trained for a different model: " + "; ".join(diffs))
        n = int(fingerprint.get("num_layers", 0) or 0)
        if n and self.layer > n:
            raise ProbeError(f"probe layer {self.layer} is beyond the model's {n} layers")
        self.meta.check_layers(n)  # after the fingerprint: the served model's layer count, not the probe's claim

    def __repr__(self) -> str:
        return (f"Probe(layer={self.layer}, bands={self.band_names}, head={self.meta.head}, "
                f"targets={self.meta.targets}, score={self.meta.score_target}, calibrated={self.is_calibrated})")


def load_probe(path: str | Path, model_fingerprint: dict[str, Any] | None = None) -> Probe:
    """Load and validate a probe; with ``model_fingerprint``, refuse a probe made for another model.

    Raises :class:`ProbeError` (one clear message) for a missing/corrupt file, a newer format
    version, NaN/Inf weights, wrong shapes or dtypes, or a fingerprint mismatch.
    """
    meta, tensors = read_probe_file(path)
    probe = Probe(meta, tensors)
    if model_fingerprint is not None:
        probe.check_model(model_fingerprint)
    else:
        meta.check_layers(fingerprint_int(meta.model_fingerprint, "num_layers"))  # the file's own consistency
    return probe


def save_probe(path: str | Path, probe: Probe) -> Path:
    return probe.save(path)


def update_calibration(path: str | Path, calibration: dict[str, Any], out: str | Path | None = None,
                       soft_table=None, soft_source: str = "") -> Path:
    """Rewrite a probe with new calibration metadata (and, optionally, a soft-skip table); the head
    tensors and all other metadata are unchanged."""
    probe = load_probe(path)
    probe.meta.calibration = calibration
    if soft_table is not None and probe.soft_table() is None:
        probe.set_soft_table(soft_table, soft_source)
    return probe.save(out or path)
