"""Typed configuration of ``sedac calibrate`` (one field per CLI flag, validated on construction)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as _field

from sedac.calibration.bounds import AUTO, BOUNDS, min_epsilon
from sedac.errors import ConfigError

RISKS = ("top1", "nll")
MODES = ("corpus", "generate")


@dataclass
class CalibrateConfig:
    """What ``sedac calibrate`` certifies and how it measures risk."""

    probe: str  #: --probe: probe file to calibrate
    out: str | None = None  #: --out: calibrated probe path (default: rewrite --probe in place)
    report_dir: str | None = None  #: --report-dir: Markdown/PNG/JSON report (default: next to --out)
    model: str | None = None  #: --model: alias, HF folder or hub id (default: the embedded SmolLM2)
    data: str = "builtin"  #: --data: "builtin", a .jsonl/.json/.txt/.parquet file, or a hub id
    split: str = "train"  #: --split: dataset split (hub datasets)
    field: str | None = None  #: --field: text/prompt/turns/messages column (auto-detected)
    chat: bool | None = None  #: --chat/--no-chat (default: on in generate mode when the tokenizer has a template)
    mode: str = "corpus"  #: --mode: "corpus" (teacher-forced text chunks) or "generate" (model continuations)
    max_length: int | None = None  #: --max-length: corpus chunk length; max prompt+continuation (default 64 / 192)
    new_tokens: int = 32  #: --new-tokens: continuation length in generate mode
    n_sequences: int = 232  #: --n-sequences: calibration+test sequences (the iid units; see check_certifiable)
    grid_sequences: int = 8  #: --grid-sequences: extra sequences used only to place the grid and ref
    epsilon: float = 0.05  #: --epsilon: tolerated mean per-sequence risk
    delta: float = 0.05  #: --delta: allowed probability that the certified risk exceeds epsilon
    risk: str = "top1"  #: --risk: "top1" (top-1 disagreement) or "nll" (NLL increase > --nll-margin)
    nll_margin: float = 0.1  #: --nll-margin: nats (risk nll)
    bound: str = AUTO  #: --bound: "auto" (wsr if n*eps >= 2 ln(1/delta), else hb), "hb", "wsr", "hoeffding", "bentkus"
    policies: list[str] = _field(default_factory=lambda: ["static-token", "dynamic-token"])  #: --policies
    grid_size: int = 10  #: --grid-size: candidate thresholds per policy
    grid_min_skip: float = 0.001  #: --grid-min-skip: target skip fraction of the most conservative point
    grid_max_skip: float = 0.5  #: --grid-max-skip: target skip fraction of the most aggressive point
    stop_factor: float = 3.0  #: --stop-factor: stop measuring a policy's grid once mean risk > factor*epsilon (0: never)
    batch_concurrency: int = 4  #: --batch-concurrency: concurrent requests per emulated decode step (batch policy)
    batch_size: int = 8  #: --batch-size: sequences per forward (token policies)
    gamma: float = 1.0  #: --gamma: dynamic-threshold sensitivity (fixed, not certified)
    prior_tokens: float = 8.0  #: --prior-tokens: dynamic running-mean prior weight k (fixed)
    soft_levels: list[float] = _field(default_factory=lambda: [0.05, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.25, 0.3])
    #: --soft-levels: grid of base levels lam for soft policies (increasing = conservative -> aggressive)
    soft_gamma: float = 0.1  #: --soft-gamma: level change per std of the probe score (soft-probe; fixed)
    soft_a_x: float = 1.0  #: --soft-a-x: sparsity of the gate/up input per unit of level (fixed)
    soft_a_h: float = 1.0  #: --soft-a-h: sparsity of the down input per unit of level (fixed)
    #: --soft-alloc: how soft sparsity is spread over layers: uniform (TEAL's one level everywhere) or greedy
    #: (per-layer allocation measured on the grid-selection sequences, sedac.calibration.soft_alloc)
    soft_alloc: str = "uniform"
    soft_alloc_target: float = 0.15  #: --soft-alloc-target: byte share the greedy allocation is built for
    test_fraction: float = 0.25  #: --test-fraction: held-out share of the units (0: none)
    resamples: int = 100  #: --resamples: random calibrate/test splits in the resampling check
    seed: int = 0  #: --seed: data order, splits
    dtype: str = "float32"  #: --dtype of the model
    device: str | None = None  #: --device (default: cuda if available, else cpu)
    progress: bool = True  #: show progress bars

    def __post_init__(self) -> None:
        from sedac.calibration.policies import parse_policy

        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.risk not in RISKS:
            raise ConfigError(f"--risk must be one of {RISKS}, got {self.risk!r}")
        if self.bound not in (AUTO, *BOUNDS):
            raise ConfigError(f"--bound must be one of {(AUTO, *BOUNDS)}, got {self.bound!r}")
        if not 0 < self.epsilon < 1:
            raise ConfigError(f"--epsilon must be in (0, 1), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"--delta must be in (0, 1), got {self.delta}")
        if self.nll_margin < 0:
            raise ConfigError(f"--nll-margin must be >= 0, got {self.nll_margin}")
        if self.max_length is None:
            self.max_length = 192 if self.mode == "generate" else 64
        if self.max_length < 4:
            raise ConfigError(f"--max-length must be >= 4, got {self.max_length}")
        if self.mode == "generate" and self.new_tokens >= self.max_length:
            raise ConfigError(f"--new-tokens {self.new_tokens} leaves no room for a prompt in --max-length {self.max_length}")
        for name in ("n_sequences", "grid_size", "batch_concurrency", "batch_size", "grid_sequences"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.n_sequences < 2:
            raise ConfigError("--n-sequences must be >= 2")
        if self.batch_concurrency < 2:
            raise ConfigError(f"--batch-concurrency must be >= 2, got {self.batch_concurrency}: the batch policy "
                              "with one concurrent request is the token policy (use --policies static-token)")
        if not 0 < self.grid_min_skip < self.grid_max_skip <= 1:
            raise ConfigError("need 0 < --grid-min-skip < --grid-max-skip <= 1")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.resamples < 0:
            raise ConfigError(f"--resamples must be >= 0, got {self.resamples}")
        if self.stop_factor < 0:
            raise ConfigError(f"--stop-factor must be >= 0, got {self.stop_factor}")
        if self.gamma < 0 or self.prior_tokens <= 0:
            raise ConfigError("--gamma must be >= 0 and --prior-tokens > 0")
        if isinstance(self.soft_levels, str):
            try:
                self.soft_levels = [float(x) for x in self.soft_levels.split(",") if x.strip()]
            except ValueError:
                raise ConfigError(f"--soft-levels must be a comma list of numbers, got {self.soft_levels!r}") from None
        lv = list(self.soft_levels)
        if not lv or any(not 0 < x <= 1 for x in lv) or any(b <= a for a, b in zip(lv, lv[1:])):
            raise ConfigError(f"--soft-levels must be strictly increasing values in (0, 1], got {lv}")
        if self.soft_gamma < 0 or self.soft_a_x < 0 or self.soft_a_h < 0:
            raise ConfigError("--soft-gamma, --soft-a-x and --soft-a-h must be >= 0")
        if self.soft_alloc not in ("uniform", "greedy"):
            raise ConfigError(f"--soft-alloc must be uniform or greedy, got {self.soft_alloc!r}")
        if not 0 < self.soft_alloc_target <= 0.7:
            raise ConfigError(f"--soft-alloc-target must be in (0, 0.7], got {self.soft_alloc_target}")
        if isinstance(self.policies, str):
            self.policies = [p.strip() for p in self.policies.split(",") if p.strip()]
        if not self.policies:
            raise ConfigError("--policies is empty")
        for p in self.policies:
            parse_policy(p)
        if len(set(self.policies)) != len(self.policies):
            raise ConfigError("--policies lists a policy twice")
        if any(p.endswith("-batch") for p in self.policies) and self.grid_sequences < self.batch_concurrency:
            raise ConfigError(f"--grid-sequences {self.grid_sequences} < --batch-concurrency {self.batch_concurrency}: "
                              "the batch grid is placed on groups of B grid sequences")
        check_certifiable(self, self.n_sequences)


def check_certifiable(cfg: CalibrateConfig, n_sequences: int) -> None:
    """Refuse up front when some requested policy cannot certify ``--epsilon`` even at zero risk.

    With ``n`` calibration units no bound here certifies below ``min_epsilon(n, delta) = 1 -
    delta^(1/n)`` (about ``ln(1/delta)/n``); ``n = u - round(u * test_fraction)`` with ``u`` = sequences
    (token policies) or ``sequences // batch_concurrency`` (batch policies).
    """
    from sedac.calibration.policies import parse_policy

    for name in cfg.policies:
        unit = cfg.batch_concurrency if parse_policy(name).policy == "batch" else 1
        u = n_sequences // unit
        n = u - int(round(u * cfg.test_fraction))
        lo = min_epsilon(n, cfg.delta)
        if lo >= cfg.epsilon:
            need = n
            while min_epsilon(need, cfg.delta) >= cfg.epsilon:
                need += 1
            raise ConfigError(
                f"{name}: {n_sequences} sequences give {n} calibration units ({'groups of %d, ' % unit if unit > 1 else ''}"
                f"--test-fraction {cfg.test_fraction}); with n units no bound certifies below 1 - delta^(1/n) = "
                f"{lo:.4f} >= --epsilon {cfg.epsilon} even at zero risk (delta {cfg.delta}). Need >= {need} "
                f"calibration units: raise --epsilon or --n-sequences, or lower --test-fraction"
                + (" or --batch-concurrency" if unit > 1 else ""))
