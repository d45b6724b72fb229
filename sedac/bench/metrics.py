"""Pure metric functions of ``sedac bench`` (definitions: docs/metrics.md). No torch, no I/O."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def tps(tokens: int, wall_s: float) -> float:
    """Aggregate throughput: generated tokens / wall-clock seconds of the whole batch."""
    if wall_s <= 0:
        raise ValueError("wall_s must be > 0")
    return tokens / wall_s


def per_request_tps(tokens: Sequence[int], latencies_s: Sequence[float]) -> float:
    """Mean over requests of ``tokens_i / latency_i`` (latency = submit -> last token)."""
    vals = [t / lat for t, lat in zip(tokens, latencies_s, strict=True) if lat > 0]
    return sum(vals) / len(vals) if vals else float("nan")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    if not values:
        raise ValueError("no values")
    return {"median": float(statistics.median(values)), "min": float(min(values)),
            "max": float(max(values)), "n": len(values)}


def speedup(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Per-round ratio ``TPS_variant[r] / TPS_baseline[r]`` (same round = same conditions); spread."""
    return spread([v / b for v, b in zip(values, baseline, strict=True)])


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """``exp(sum NLL / n)`` over teacher-forced next-token predictions (nats)."""
    if n_tokens <= 0:
        raise ValueError("n_tokens must be > 0")
    return math.exp(nll_sum / n_tokens)


def top1_agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Fraction of positions where the two argmax predictions are equal."""
    if len(a) != len(b) or not a:
        raise ValueError("need two equally long, non-empty sequences")
    return sum(x == y for x, y in zip(a, b)) / len(a)


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token of two generations; ``None`` when identical.

    A strict prefix diverges at the shorter length.
    """
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def greedy_agreement(outputs: Sequence[Sequence[int]], baseline: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Free-running greedy comparison per prompt.

    ``identical_fraction``: fraction of prompts whose token ids equal the baseline's exactly;
    ``mean_first_divergence``: mean first-divergence index over the prompts that diverge (None if none);
    ``mean_matched_prefix``: mean matched-prefix length over all prompts (identical ones count fully).
    """
    if len(outputs) != len(baseline) or not outputs:
        raise ValueError("need the same, non-zero number of outputs as baseline outputs")
    divs = [first_divergence(o, b) for o, b in zip(outputs, baseline)]
    diverged = [d for d in divs if d is not None]
    prefix = [len(b) if d is None else d for d, b in zip(divs, baseline)]
    return {
        "identical_fraction": sum(d is None for d in divs) / len(divs),
        "mean_first_divergence": (sum(diverged) / len(diverged)) if diverged else None,
        "mean_matched_prefix": sum(prefix) / len(prefix),
        "n": len(divs),
    }


def skip_rate(skipped: int, evaluated: int) -> float:
    """Fraction of token x layer MLP evaluations skipped (0 when nothing was evaluated)."""
    return skipped / evaluated if evaluated else 0.0


def mlp_cost(hidden: int, intermediate: int, dtype_bytes: int) -> dict[str, int]:
    """Per token per layer cost of a gated (SwiGLU) MLP: 3 matrices of H x I.

    FLOPs = 2 * 3 * H * I (multiply-add = 2); weight bytes = 3 * H * I * dtype size.
    """
    return {"flops": 2 * 3 * hidden * intermediate, "bytes": 3 * hidden * intermediate * dtype_bytes}


def mlp_savings(rate_band: float, band_layers: int, num_layers: int, hidden: int, intermediate: int,
                dtype_bytes: int, step_skip_rate: float | None = None) -> dict[str, float]:
    """MLP work saved per generated token given the skip rate over the band layers.

    ``flops_saved_per_token`` = rate_band * band_layers * 2*3*H*I (valid at any batch size: skipped
    rows are not computed). Weight bytes: at batch 1 a skipped token does not read the band's MLP
    weights, so ``bytes_saved_per_token_b1`` = rate_band * band_layers * 3*H*I*dtype. In a batch the
    weights are read once per step unless *every* row skips, so only the step-level rate (batch
    policy, ``step_skip_rate``) saves bytes: ``bytes_saved_per_step`` = step_skip_rate * band_layers
    * 3*H*I*dtype. Fractions are relative to all ``num_layers`` MLPs.
    """
    c = mlp_cost(hidden, intermediate, dtype_bytes)
    total_flops = num_layers * c["flops"]
    total_bytes = num_layers * c["bytes"]
    out = {
        "mlp_flops_per_token": float(total_flops),
        "flops_saved_per_token": rate_band * band_layers * c["flops"],
        "flops_saved_fraction_of_mlp": rate_band * band_layers / num_layers,
        "bytes_saved_per_token_b1": rate_band * band_layers * c["bytes"],
        "bytes_saved_fraction_of_mlp_b1": rate_band * band_layers / num_layers,
        "mlp_bytes_per_step": float(total_bytes),
    }
    if step_skip_rate is not None:
        out["bytes_saved_per_step_batched"] = step_skip_rate * band_layers * c["bytes"]
    return out


def whole_mlp_bytes_saved(rate_band: float, band_layers: int, num_layers: int) -> float:
    """Whole-MLP skip: fraction of all MLP weight bytes not read per token (batch 1) =
    skip rate over the band layers x band layers / all layers."""
    if num_layers <= 0 or not 0 <= band_layers <= num_layers:
        raise ValueError("need 0 <= band_layers <= num_layers and num_layers > 0")
    return rate_band * band_layers / num_layers


def soft_mlp_savings(bytes_fraction: float, num_layers: int, hidden: int, intermediate: int,
                     dtype_bytes: int) -> dict[str, float]:
    """Soft skip: MLP work saved per token from the fraction of all MLP weight bytes not read.

    A zeroed input entry removes one weight column from its matrix's product for that token, so the
    FLOPs saved are the same fraction as the bytes: ``flops_saved_per_token`` = f * L * 2*3*H*I and
    ``bytes_saved_per_token_b1`` = f * L * 3*H*I*dtype (batch 1: a sparse GEMV skips the columns; in a
    batch the rows' masks union, so the bytes saved per step are smaller and not reported).
    """
    if not 0.0 <= bytes_fraction <= 1.0:
        raise ValueError(f"bytes_fraction must lie in [0, 1], got {bytes_fraction}")
    c = mlp_cost(hidden, intermediate, dtype_bytes)
    return {"mlp_flops_per_token": float(num_layers * c["flops"]),
            "flops_saved_per_token": bytes_fraction * num_layers * c["flops"],
            "flops_saved_fraction_of_mlp": bytes_fraction,
            "bytes_saved_per_token_b1": bytes_fraction * num_layers * c["bytes"],
            "bytes_saved_fraction_of_mlp_b1": bytes_fraction,
            "mlp_bytes_per_step": float(num_layers * c["bytes"])}


def spec_decode(num_drafts: int, num_draft_tokens: int, num_accepted: int, k: int) -> dict[str, float]:
    """Speculative-decoding metrics from vLLM's counters (deltas over the measured window).

    acceptance_rate AR = accepted / proposed draft tokens;
    mean_acceptance_length tau = 1 + accepted / drafts (tokens emitted per verification step, bonus
    token included); TRR = tau / (k + 1), the fraction of the maximum k+1 tokens a step can emit.
    With k_eff = proposed / drafts, tau = 1 + AR * k_eff, so TRR = (1 + AR * k_eff) / (k + 1).
    """
    if num_drafts <= 0 or num_draft_tokens <= 0:
        return {"acceptance_rate": float("nan"), "mean_acceptance_length": float("nan"),
                "trr": float("nan"), "drafts": num_drafts, "draft_tokens": num_draft_tokens,
                "accepted": num_accepted, "k": k}
    tau = 1.0 + num_accepted / num_drafts
    return {"acceptance_rate": num_accepted / num_draft_tokens, "mean_acceptance_length": tau,
            "trr": tau / (k + 1), "drafts": num_drafts, "draft_tokens": num_draft_tokens,
            "accepted": num_accepted, "k": k}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when maximising both coordinates (speed, quality)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return front


def latency_stats(ttft_s: Sequence[float], itl_s: Sequence[float]) -> dict[str, float]:
    """Median and p90 of time-to-first-token and inter-token latency (seconds)."""
    def pct(v: Sequence[float], q: float) -> float:
        if not v:
            return float("nan")
        s = sorted(v)
        return float(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))])

    return {"ttft_median_s": pct(ttft_s, 0.5), "ttft_p90_s": pct(ttft_s, 0.9),
            "itl_median_s": pct(itl_s, 0.5), "itl_p90_s": pct(itl_s, 0.9)}
