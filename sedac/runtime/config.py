"""Configuration of the vLLM plugin (``additional_config={"sedac": {...}}`` or ``$SEDAC_VLLM_CONFIG``).

The plugin is a no-op unless one of these is present. Precedence: vLLM's ``additional_config`` key
``"sedac"`` (CLI ``--additional-config '{"sedac": {...}}'``), then the environment variable
``SEDAC_VLLM_CONFIG`` holding the same JSON object. Keys map 1:1 onto :class:`SedacVllmConfig`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from sedac.errors import ConfigError
from sedac.runtime.policy import MODES, POLICIES

ENV_VAR = "SEDAC_VLLM_CONFIG"
IMPLS = ("auto", "module", "op")


@dataclass
class SedacVllmConfig:
    """The ``sedac`` block of vLLM's ``additional_config``."""

    probe: str  #: path of the probe (.safetensors) — required
    mode: str = "static"  #: "static", "dynamic" (certified parameters only), "never", "always", "soft"
    policy: str = "token"  #: "token" (per-token gather/scatter) or "batch" (whole step or nothing)
    threshold: float | None = None  #: score threshold for every band; None = certified (probe calibration)
    impl: str = "auto"  #: MLP implementation: "module", "op" (torch.ops.sedac.skip_mlp) or "auto"
    stats_file: str | None = None  #: worker writes per-band counters here (atomic JSON) ...
    stats_interval_s: float = 2.0  #: ... at most this often (seconds)
    record: bool = False  #: keep every step's decisions in memory (eager mode; tests/debugging)
    soft_family: str = "probe"  #: mode "soft": certified family "probe" (probe-controlled level) or "uniform"
    soft_level: float | None = None  #: mode "soft": explicit uniform level (uncertified; 0 = never fires)
    #: batch policy: B, the step size the batch rule applies from (smaller steps: token rule). None =
    #: the B recorded with the probe's certified batch thresholds; given, it must equal it (>= 2).
    batch_concurrency: int | None = None

    def __post_init__(self) -> None:
        if not self.probe:
            raise ConfigError("sedac config: `probe` (path of the probe file) is required")
        if self.mode not in MODES + ("soft",):
            raise ConfigError(f"sedac config: `mode` must be one of {MODES + ('soft',)}, got {self.mode!r}")
        if self.soft_family not in ("probe", "uniform"):
            raise ConfigError(f"sedac config: `soft_family` must be \"probe\" or \"uniform\", got {self.soft_family!r}")
        if self.soft_level is not None:
            if self.mode != "soft":
                raise ConfigError("sedac config: `soft_level` needs mode \"soft\"")
            try:
                self.soft_level = float(self.soft_level)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"sedac config: `soft_level` must be a number or null, got {self.soft_level!r}") from exc
            if not 0.0 <= self.soft_level <= 1.0:
                raise ConfigError(f"sedac config: `soft_level` must be in [0, 1], got {self.soft_level}")
        if self.mode == "soft" and self.threshold is not None:
            raise ConfigError("sedac config: mode \"soft\" uses soft parameters; `threshold` must be null")
        if self.mode == "dynamic" and self.threshold is not None:
            raise ConfigError("sedac config: the dynamic policy uses its certified parameters; "
                              "`threshold` must be null (certified) with mode \"dynamic\"")
        if self.policy not in POLICIES:
            raise ConfigError(f"sedac config: `policy` must be one of {POLICIES}, got {self.policy!r}")
        if self.impl not in IMPLS:
            raise ConfigError(f"sedac config: `impl` must be one of {IMPLS}, got {self.impl!r}")
        if self.threshold is not None:
            try:
                self.threshold = float(self.threshold)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"sedac config: `threshold` must be a number or null, got {self.threshold!r}") from exc
        if self.batch_concurrency is not None and (isinstance(self.batch_concurrency, bool)
                                                   or not isinstance(self.batch_concurrency, int)
                                                   or self.batch_concurrency < 2):
            raise ConfigError(f"sedac config: `batch_concurrency` must be an integer >= 2 (B = 1 is the token "
                              f"policy), got {self.batch_concurrency!r}")
        if self.stats_interval_s < 0:
            raise ConfigError("sedac config: `stats_interval_s` must be >= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SedacVllmConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"sedac config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"sedac config: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(additional_config: dict[str, Any] | None = None) -> SedacVllmConfig | None:
    """The active sedac config, or None when sedac is not configured (the plugin is then a no-op)."""
    block = (additional_config or {}).get("sedac")
    if block is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            return None
        try:
            block = json.loads(env)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"${ENV_VAR} is not valid JSON: {exc}") from exc
    return SedacVllmConfig.from_dict(block)


def dtype_mismatch(probe, served_dtype: str, certified: bool = True) -> str | None:
    """A warning when certified thresholds are served in another dtype than ``sedac calibrate`` used.

    The certificate is a statement about the calibration dtype (recorded as ``calibration.dtype``):
    scores and MLP outputs change with the dtype, so another dtype is not covered. None when the
    dtypes agree, the thresholds are not certified ones, or the probe predates the record.
    """
    cal = (probe.meta.calibration or {}).get("dtype")
    served = str(served_dtype).removeprefix("torch.")
    if not certified or cal is None or served in ("auto", str(cal)):
        return None
    return (f"WARNING sedac: the probe's thresholds were certified in {cal} but are served in {served}; "
            f"the certificate does not cover this dtype (re-run `sedac calibrate --dtype {served}` or serve "
            f"with --dtype {cal})")
