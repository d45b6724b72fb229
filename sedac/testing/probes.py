"""Random probes for tests and benchmarks (explicitly randomised weights)."""

from __future__ import annotations

from typing import Any


def random_probe(fingerprint: dict[str, Any], layer: int, bands: list[tuple[int, int]], seed: int = 0,
                 targets=("safety",), score_target: str = "safety", head: str = "linear", rank: int = 4,
                 bias: float = 0.0):
    """A valid :class:`~sedac.probes.Probe` with N(0, 1/d) weights; ``bias`` shifts every logit."""
    import torch

    from sedac.probes import Probe, ProbeMeta

    d = int(fingerprint["hidden_size"])
    g = torch.Generator().manual_seed(seed)
    meta = ProbeMeta(model_fingerprint=dict(fingerprint), layer=layer, bands=[list(b) for b in bands],
                     head=head, rank=rank if head == "lowrank" else None, targets=list(targets),
                     score_target=score_target, provenance={"kind": "random test probe", "seed": seed})
    k = len(meta.outputs)
    t = {"norm.mean": torch.zeros(d), "norm.std": torch.ones(d),
         "head.bias": torch.full((k,), float(bias))}
    if head == "linear":
        t["head.weight"] = torch.randn(k, d, generator=g) / d ** 0.5
    else:
        t["head.down"] = torch.randn(rank, d, generator=g) / d ** 0.5
        t["head.up"] = torch.randn(k, rank, generator=g) / rank ** 0.5
    return Probe(meta, t)
