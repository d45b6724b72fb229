"""Typed configuration of ``sedac collect`` (one field per CLI flag, validated on construction)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path

from sedac.errors import ConfigError

MODES = ("corpus", "generate")
BACKENDS = ("hf", "vllm")
GEN_BATCHING = ("batch", "single")

# Fields that must match between a partial output and a resumed run. ``out``, ``resume`` and
# ``progress`` only say where/how to run, not what is collected.
_RUN_ONLY = ("out", "resume", "progress", "fail_after_shards")


@dataclass
class CollectConfig:
    """What ``sedac collect`` collects and how."""

    out: str  #: --out: output folder (shards + manifest.json)
    model: str | None = None  #: --model: alias, HF folder or hub id (default: the embedded SmolLM2)
    dataset: str = "builtin"  #: --dataset: "builtin", a local .jsonl/.json/.txt/.parquet file, or a hub id
    split: str = "train"  #: --split: dataset split (hub datasets; local files have "train")
    field: str | None = None  #: --field: text/prompt/turns/messages column (auto-detected when None)
    limit: int | None = None  #: --limit: use at most this many records (corpus: chunks) ; None = all
    mode: str = "corpus"  #: --mode: "corpus" (teacher-forced text) or "generate" (continue prompts)
    max_length: int = 512  #: --max-length: corpus chunk length / max prompt+continuation length
    new_tokens: int = 64  #: --new-tokens: tokens generated per prompt (generate mode)
    temperature: float = 0.0  #: --temperature: 0 = greedy (generate mode)
    gen_batching: str = "batch"  #: --gen-batching: "batch" (left-padded HF generate) or "single"
    chat: bool | None = None  #: --chat/--no-chat: render prompts with the chat template (None: auto)
    layers: list[int] = _field(default_factory=lambda: [20])  #: --layers: probe layers (residual entering L)
    bands: list[tuple[int, int]] = _field(default_factory=list)  #: --skip-band A-B (repeatable)
    soft_levels: list[float] = _field(default_factory=list)  #: --soft-level s (repeatable): soft-skip labels
    backend: str = "hf"  #: --backend: "hf" or "vllm" (hidden states in vLLM, labels in HF)
    batch_size: int = 4  #: --batch-size: sequences per forward
    shard_tokens: int = 65536  #: --shard-tokens: flush a shard once it holds at least this many tokens
    dtype: str = "float32"  #: --dtype of the model
    device: str | None = None  #: --device (default: cuda if available, else cpu)
    seed: int = 0  #: --seed (sampling, when --temperature > 0)
    resume: bool = True  #: --resume/--no-resume: continue a partial output with the same config
    progress: bool = True  #: show a progress bar
    fail_after_shards: int | None = None  #: testing hook: raise after writing this many shards

    def __post_init__(self) -> None:
        self.out = str(self.out)
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.gen_batching not in GEN_BATCHING:
            raise ConfigError(f"--gen-batching must be one of {GEN_BATCHING}, got {self.gen_batching!r}")
        if self.max_length < 2:
            raise ConfigError(f"--max-length must be >= 2, got {self.max_length}")
        if self.new_tokens < 1:
            raise ConfigError(f"--new-tokens must be >= 1, got {self.new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.shard_tokens < 1:
            raise ConfigError(f"--shard-tokens must be >= 1, got {self.shard_tokens}")
        if not self.layers:
            raise ConfigError("--layers is empty")
        self.layers = sorted({int(x) for x in self.layers})
        if self.layers[0] < 0:
            raise ConfigError(f"--layers: layer {self.layers[0]} is negative")
        self.bands = [(int(a), int(b)) for a, b in self.bands]
        for a, b in self.bands:
            if a < 0 or b < a:
                raise ConfigError(f"--skip-band {a}-{b}: need 0 <= FIRST <= LAST")
        if len(set(self.bands)) != len(self.bands):
            raise ConfigError("--skip-band: the same band is given twice")
        levels = []
        for s in self.soft_levels:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 < float(s) <= 1.0:
                raise ConfigError(f"--soft-level must be a number in (0, 1], got {s!r}")
            levels.append(float(s))
        names = [f"{s:g}" for s in levels]
        if len(set(names)) != len(names):
            raise ConfigError(f"--soft-level: the same level is given twice ({', '.join(names)})")
        self.soft_levels = sorted(levels)

    def validate_model(self, num_layers: int) -> None:
        """Check layers and bands against the model's layer count (named flags in errors)."""
        for L in self.layers:
            if L > num_layers:
                raise ConfigError(f"--layers: layer {L} is out of range: valid probe layers are 0..{num_layers}")
        for a, b in self.bands:
            if b >= num_layers:
                raise ConfigError(f"--skip-band {a}-{b} is out of range: the model has layers 0..{num_layers - 1}")

    def identity(self) -> dict:
        """The part of the config that defines the data (compared on --resume)."""
        from sedac.provenance import to_jsonable

        d = to_jsonable(self)
        for k in _RUN_ONLY:
            d.pop(k, None)
        return d

    @property
    def out_path(self) -> Path:
        return Path(self.out)


def band_key(band: tuple[int, int]) -> str:
    """Tensor-name suffix of a band: ``(20, 27)`` -> ``"20-27"``."""
    return f"{band[0]}-{band[1]}"
