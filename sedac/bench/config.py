"""Typed configuration for ``sedac bench`` and ``sedac quickstart``, mirrored 1:1 by YAML recipes.

A recipe is a YAML mapping with a ``kind:`` key naming the dataclass it maps onto (see
:data:`RECIPE_KINDS`); every other key is a field of that dataclass (nested mappings map onto nested
dataclasses). Unknown keys and invalid values raise :class:`~sedac.errors.ConfigError` naming the
YAML key path (e.g. ``variants[2].sedac.mode``).

Other sedac areas add their recipe kinds by adding one ``"kind": "module:Class"`` entry to
:data:`RECIPE_KINDS` (the class must be a dataclass; it is imported lazily). Recipes without a
``kind:`` key take it from their folder through :data:`RECIPE_DIR_KINDS` (``recipes/shapes/``).
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedac.errors import ConfigError

SEDAC_MODES = ("static", "dynamic", "never", "always", "soft")
SOFT_FAMILIES = ("uniform", "probe")
SPEC_METHODS = ("ngram", "suffix")


@dataclass
class PromptSet:
    """Where benchmark prompts come from."""

    source: str = "builtin"  #: "builtin", a local .jsonl/.json/.txt/.parquet file, or an HF hub dataset id
    field: str | None = None  #: text field (default: first of prompt/instruction/text/turns/messages)
    split: str = "train"  #: dataset split (hub datasets / parquet)
    n: int = 16  #: number of prompts (first n, after dropping empty ones)
    chat: bool = True  #: render each prompt with the model's chat template
    shuffle_seed: int | None = None  #: shuffle the records first, in the order `sedac calibrate --seed` draws them
    skip: int = 0  #: drop the first `skip` records (after shuffling), e.g. those a calibration run used

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"prompts.n must be >= 1, got {self.n}")
        if self.skip < 0:
            raise ConfigError(f"prompts.skip must be >= 0, got {self.skip}")


@dataclass
class SedacSpec:
    """sedac settings of one variant (mirrors the vLLM plugin's ``additional_config["sedac"]``)."""

    probe: str | None = None  #: probe path; None -> the bench's top-level ``probe``
    mode: str = "static"  #: static | dynamic | never | always
    policy: str = "token"  #: token | batch
    threshold: float | None = None  #: None = certified from the probe's calibration; else a score threshold
    soft_family: str = "probe"  #: mode soft: "probe" (probe-controlled level) or "uniform" (same level per token)
    soft_level: float | None = None  #: mode soft: None = certified; else an UNcertified uniform level in [0, 1]

    def __post_init__(self) -> None:
        if self.mode not in SEDAC_MODES:
            raise ConfigError(f"sedac.mode must be one of {SEDAC_MODES}, got {self.mode!r}")
        if self.policy not in ("token", "batch"):
            raise ConfigError(f"sedac.policy must be token or batch, got {self.policy!r}")
        if self.threshold is not None and self.mode != "static":
            raise ConfigError("sedac.threshold (an explicit score threshold) implies sedac.mode: static")
        if self.soft_family not in SOFT_FAMILIES:
            raise ConfigError(f"sedac.soft_family must be one of {SOFT_FAMILIES}, got {self.soft_family!r}")
        if self.soft_level is not None:
            if self.mode != "soft":
                raise ConfigError("sedac.soft_level (an explicit soft level) implies sedac.mode: soft")
            if not 0.0 <= self.soft_level <= 1.0:
                raise ConfigError(f"sedac.soft_level must lie in [0, 1], got {self.soft_level}")
        if self.mode == "soft" and self.policy != "token":
            raise ConfigError("sedac.policy: soft skip decides per token (policy: token)")

    def vllm_config(self, probe: str) -> dict[str, Any]:
        """The plugin's ``additional_config["sedac"]`` block (soft keys only for mode soft)."""
        out: dict[str, Any] = {"probe": probe, "mode": self.mode, "policy": self.policy,
                               "threshold": self.threshold, "impl": "module"}
        if self.mode == "soft":
            out.update(soft_family=self.soft_family, soft_level=self.soft_level)
        return out


@dataclass
class SpecSpec:
    """Speculative decoding of one variant (maps onto vLLM's ``speculative_config``)."""

    method: str = "ngram"  #: ngram | suffix (suffix needs arctic-inference)
    num_speculative_tokens: int = 3  #: k, draft tokens proposed per step
    prompt_lookup_max: int = 3  #: ngram: longest n-gram matched
    prompt_lookup_min: int = 1  #: ngram: shortest n-gram matched

    def __post_init__(self) -> None:
        if self.method not in SPEC_METHODS:
            raise ConfigError(f"speculative.method must be one of {SPEC_METHODS}, got {self.method!r}")
        if self.num_speculative_tokens < 1:
            raise ConfigError("speculative.num_speculative_tokens must be >= 1")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ConfigError("speculative: need 1 <= prompt_lookup_min <= prompt_lookup_max")

    def vllm_config(self) -> dict[str, Any]:
        if self.method == "ngram":
            return {"method": "ngram", "num_speculative_tokens": self.num_speculative_tokens,
                    "prompt_lookup_max": self.prompt_lookup_max, "prompt_lookup_min": self.prompt_lookup_min}
        return {"method": "suffix", "num_speculative_tokens": self.num_speculative_tokens}


@dataclass
class Variant:
    """One entry of the benchmark matrix (one vLLM engine)."""

    name: str = ""  #: unique label shown in tables
    sedac: SedacSpec | None = None  #: None -> sedac off
    speculative: SpecSpec | None = None  #: None -> no speculative decoding

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("variants[].name is required")


@dataclass
class QualityConfig:
    """Teacher-forced quality on a corpus through the HF runtime (perplexity, top-1 agreement)."""

    enabled: bool = True  #: run the teacher-forced quality pass
    corpus: str = "builtin"  #: "builtin", a text/jsonl file or a hub dataset id
    field: str | None = None  #: text field for jsonl / datasets
    n_sequences: int = 16  #: number of sequences
    seq_len: int = 256  #: tokens per sequence (chunks of the tokenized corpus)

    def __post_init__(self) -> None:
        if self.n_sequences < 1 or self.seq_len < 8:
            raise ConfigError("quality.n_sequences must be >= 1 and quality.seq_len >= 8")


@dataclass
class OfflineBenchConfig:
    """``sedac bench offline``: an in-process vLLM engine per variant, interleaved repeats."""

    kind: str = "bench_offline"  #: recipe kind
    model: str = "smollm2-135m-instruct"  #: alias, local HF folder or hub id
    probe: str | None = None  #: default probe for variants with sedac
    prompts: PromptSet = field(default_factory=PromptSet)  #: prompt set
    variants: list[Variant] = field(default_factory=list)  #: the matrix; the baseline is one of them
    baseline: str = "vanilla"  #: name of the baseline variant (must have sedac and speculative off)
    max_tokens: int = 64  #: generated tokens per request (greedy, ignore_eos)
    warmup: int = 1  #: warm-up rounds per variant (not measured)
    repeats: int = 3  #: measured rounds; variants interleaved round-robin within each round
    max_model_len: int = 512  #: vLLM max_model_len
    dtype: str = "float32"  #: vLLM dtype (float32 on CPU for SmolLM2)
    enforce_eager: bool = True  #: skip torch.compile / graphs (engine start ~45 s on CPU)
    max_num_seqs: int = 16  #: vLLM max_num_seqs (concurrent requests per step)
    kv_cache_gib: int = 1  #: VLLM_CPU_KVCACHE_SPACE (GiB) per engine on CPU
    quality: QualityConfig = field(default_factory=QualityConfig)  #: teacher-forced quality pass
    out_dir: str = "bench-results"  #: results folder
    seed: int = 0  #: seed for vLLM and prompt order

    def __post_init__(self) -> None:
        if self.kind != "bench_offline":
            raise ConfigError(f"kind must be bench_offline, got {self.kind!r}")
        if self.repeats < 3:
            raise ConfigError(f"repeats must be >= 3 (median and spread need it), got {self.repeats}")
        if self.warmup < 0 or self.max_tokens < 1:
            raise ConfigError("warmup must be >= 0 and max_tokens >= 1")
        if not self.variants:
            raise ConfigError("variants: at least the baseline is required")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"variants[].name must be unique, got {names}")
        base = {v.name: v for v in self.variants}.get(self.baseline)
        if base is None:
            raise ConfigError(f"baseline {self.baseline!r} is not one of variants {names}")
        if base.sedac is not None or base.speculative is not None:
            raise ConfigError("baseline: the baseline variant must have sedac and speculative off")
        for i, v in enumerate(self.variants):
            if v.sedac is not None and v.sedac.probe is None and self.probe is None:
                raise ConfigError(f"variants[{i}].sedac.probe: no probe given (nor a top-level probe)")

    def probe_for(self, v: Variant) -> str | None:
        return None if v.sedac is None else (v.sedac.probe or self.probe)


@dataclass
class OnlineBenchConfig:
    """``sedac bench online``: any OpenAI-compatible endpoint, several concurrency levels."""

    kind: str = "bench_online"  #: recipe kind
    base_url: str = "http://127.0.0.1:8000/v1"  #: endpoint (…/v1)
    model: str | None = None  #: served model name (None: the first of /v1/models)
    api_key: str = "EMPTY"  #: bearer token
    prompts: PromptSet = field(default_factory=PromptSet)  #: prompt set (sent as chat messages)
    concurrency: list[int] = field(default_factory=lambda: [1, 4])  #: concurrent clients per level
    requests_per_level: int = 8  #: requests sent at each level
    max_tokens: int = 64  #: max_tokens per request (greedy)
    label: str = "endpoint"  #: name of this endpoint in the report
    timeout_s: float = 300.0  #: per-request timeout
    out_dir: str = "bench-online"  #: results folder

    def __post_init__(self) -> None:
        if self.kind != "bench_online":
            raise ConfigError(f"kind must be bench_online, got {self.kind!r}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError("concurrency: a non-empty list of integers >= 1")
        if self.requests_per_level < 1 or self.max_tokens < 1:
            raise ConfigError("requests_per_level and max_tokens must be >= 1")


@dataclass
class QuickstartConfig:
    """``sedac quickstart``: the whole pipeline on one model, with small per-step budgets."""

    kind: str = "quickstart"  #: recipe kind
    model: str = "smollm2-135m-instruct"  #: model alias or folder
    work_dir: str = "sedac-quickstart"  #: where every artefact goes
    layer: int = 20  #: probe layer (residual stream entering this layer)
    band: str = "24-29"  #: skip band A-B
    collect_prompts: int = 48  #: built-in prompts continued in generate mode
    collect_new_tokens: int = 64  #: tokens generated per prompt in collect
    corpus: str = "builtin"  #: corpus for corpus-mode collect and the bench's quality pass
    corpus_chunks: int = 32  #: corpus chunks collected (corpus mode)
    max_epochs: int = 8  #: probe training epochs (early stopping may stop sooner)
    epsilon: float = 0.05  #: accepted mean per-sequence top-1 disagreement (calibrate --epsilon)
    delta: float = 0.05  #: calibration failure probability (calibrate --delta)
    cal_data: str = "builtin-tasks"  #: calibration prompts (generate mode); disjoint from the training prompts
    cal_sequences: int = 200  #: calibration + test sequences (a certificate at epsilon needs >~ ln(1/delta)/epsilon)
    cal_test_fraction: float = 0.3  #: held-out share of the calibration sequences (calibrate --test-fraction)
    cal_new_tokens: int = 32  #: generated tokens per calibration sequence
    cal_grid_size: int = 8  #: candidate thresholds
    demo_threshold: float | None = 0.9  #: also bench an UNcertified P(safe) >= this variant (None: off)
    soft_levels: str | None = "0.06,0.1,0.14,0.18"  #: soft-uniform grid certified beside static-token (None: off)
    bench_prompts: int = 8  #: prompts in the offline bench
    bench_max_tokens: int = 64  #: tokens per request in the bench
    repeats: int = 3  #: measured bench rounds

    def __post_init__(self) -> None:
        if self.kind != "quickstart":
            raise ConfigError(f"kind must be quickstart, got {self.kind!r}")
        if not 0.0 < self.epsilon < 1.0 or not 0.0 < self.delta < 1.0:
            raise ConfigError("epsilon and delta must lie in (0, 1)")
        if self.repeats < 3:
            raise ConfigError("repeats must be >= 3")
        if self.demo_threshold is not None and not 0.0 < self.demo_threshold < 1.0:
            raise ConfigError("demo_threshold must lie in (0, 1) or be null")
        if self.soft_levels is not None:
            try:
                lv = [float(x) for x in str(self.soft_levels).split(",") if x.strip()]
            except ValueError:
                raise ConfigError(f"soft_levels must be a comma list of numbers or null, got {self.soft_levels!r}") from None
            if not lv or any(not 0 < x <= 1 for x in lv) or any(b <= a for a, b in zip(lv, lv[1:])):
                raise ConfigError(f"soft_levels must be strictly increasing values in (0, 1], got {self.soft_levels!r}")
            self.soft_levels = ",".join(f"{x:g}" for x in lv)


#: recipe ``kind`` -> "module:Class" (dataclass). Extend here for new recipe kinds.
RECIPE_KINDS: dict[str, str] = {
    "bench_offline": "sedac.bench.config:OfflineBenchConfig",
    "bench_online": "sedac.bench.config:OnlineBenchConfig",
    "quickstart": "sedac.bench.config:QuickstartConfig",
    "decode_shape": "sedac.bench.decode:ShapeConfig",
}

#: recipes without a ``kind:`` key: kind inferred from the folder directly under ``recipes/``.
RECIPE_DIR_KINDS: dict[str, str] = {
    "shapes": "decode_shape",
}


def _build(tp: Any, value: Any, key: str) -> Any:
    """Convert a YAML value into type ``tp`` (dataclass, list[…], Optional[…], scalar)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_build(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; errors name the key path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{unknown[0]}: unknown key "
                          f"(allowed: {', '.join(sorted(names))})")
    kw = {k: _build(hints[k], v, f"{prefix + '.' if prefix else ''}{k}") for k, v in data.items()}
    try:
        return cls(**kw)
    except ConfigError as exc:
        raise ConfigError(f"{prefix + ': ' if prefix else ''}{exc}") from None


def recipe_class(kind: str) -> type:
    if kind not in RECIPE_KINDS:
        raise ConfigError(f"kind: unknown recipe kind {kind!r} (known: {', '.join(sorted(RECIPE_KINDS))})")
    mod, _, name = RECIPE_KINDS[kind].partition(":")
    return getattr(importlib.import_module(mod), name)


def load_recipe(path: str | Path, expect: str | None = None) -> Any:
    """Load a YAML recipe into its dataclass (dispatch on ``kind:``); ``expect`` checks the kind."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe must be a YAML mapping")
    kind = data.get("kind") or RECIPE_DIR_KINDS.get(p.parent.name)
    if kind is None:
        raise ConfigError(f"{p}: kind: missing 'kind:' key (known kinds: {', '.join(sorted(RECIPE_KINDS))})")
    if expect is not None and kind != expect:
        raise ConfigError(f"{p}: kind: expected {expect!r}, got {kind!r}")
    try:
        return from_dict(recipe_class(kind), data)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
