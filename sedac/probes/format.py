"""The probe file format (one source of truth).

A probe is a ``.safetensors`` file — never pickle. Tensors (float32):

=================  ==========  ==================================================
``norm.mean``      ``[d]``     standardisation mean (train split only)
``norm.std``       ``[d]``     standardisation std (> 0)
``head.weight``    ``[K, d]``  linear head (``head = "linear"``)
``head.down``      ``[r, d]``  low-rank head, first factor (``head = "lowrank"``)
``head.up``        ``[K, r]``  low-rank head, second factor
``head.bias``      ``[K]``
``soft.table``     ``[L,2,Q]`` optional (format 2): soft-skip magnitude quantiles of ``|x|``/``|h|``
                               per layer at ``p = 1/(Q+1) ... Q/(Q+1)`` (``p = 0`` -> 0 and ``p = 1`` ->
                               +inf are implied), see :mod:`sedac.runtime.soft`
=================  ==========  ==================================================

The header's ``__metadata__`` holds one key, ``"sedac"``, whose value is the JSON of
:class:`ProbeMeta`: format version, model fingerprint, probe layer, skip bands, head and target
kinds, output columns, training metrics, calibration (thresholds + certificate; empty until
``sedac calibrate``) and provenance.

Outputs: column ``"entropy"`` predicts the final-layer next-token entropy in nats; column
``"safety:A-B"`` is the logit that skipping band ``A-B`` keeps the full model's top-1 token.
The **skip score** (higher = safer to skip), one per band, is ``sigmoid(safety logit)`` when
``score_target == "safety"`` and ``-predicted entropy`` when ``score_target == "entropy"``.
A token skips a band when its score is ``>=`` that band's threshold.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedac.errors import ProbeError

FORMAT_VERSION = 2  #: 2 added the optional soft-skip table; version-1 files load unchanged
MAX_FILE_BYTES = 256 * 1024 * 1024  # probes are KBs–MBs; refuse anything absurd before reading
MAX_HEADER_BYTES = 16 * 1024 * 1024
HEADS = ("linear", "lowrank")
TARGETS = ("entropy", "safety")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def fingerprint_int(fp: dict[str, Any], key: str) -> int:
    """``fp[key]`` as a non-negative int; 0 when absent/null (unknown). Anything else is a ProbeError."""
    v = fp.get(key)
    if v is None:
        return 0
    if not _is_int(v) or v < 0:
        raise ProbeError(f"probe metadata: model_fingerprint.{key} must be a non-negative integer, got {v!r}")
    return v


def band_name(band: tuple[int, int] | list[int]) -> str:
    return f"{band[0]}-{band[1]}"


@dataclass
class ProbeMeta:
    """Everything in the probe header besides the tensors."""

    model_fingerprint: dict[str, Any]
    layer: int  #: probe layer (residual stream entering this decoder layer)
    bands: list[list[int]]  #: skip bands, inclusive ``[first, last]``
    head: str = "linear"  #: "linear" or "lowrank"
    rank: int | None = None  #: rank of the low-rank head
    targets: list[str] = field(default_factory=lambda: ["safety"])
    score_target: str = "safety"  #: which target drives skip decisions
    training: dict[str, Any] = field(default_factory=dict)  #: validation metrics etc.
    calibration: dict[str, Any] = field(default_factory=dict)  #: thresholds + certificate
    provenance: dict[str, Any] = field(default_factory=dict)
    soft: dict[str, Any] = field(default_factory=dict)  #: soft-skip table info ({"quantiles": Q, "source": ...})
    format_version: int = FORMAT_VERSION

    @property
    def outputs(self) -> list[str]:
        """Names of the head's output columns, in order."""
        cols = ["entropy"] if "entropy" in self.targets else []
        if "safety" in self.targets:
            cols += [f"safety:{band_name(b)}" for b in self.bands]
        return cols

    def validate(self, check_layers: bool = True) -> None:
        """Structural checks; with ``check_layers``, also the band range against the fingerprint's own layer count.

        Loading against a model (:meth:`sedac.probes.Probe.check_model`) passes ``check_layers=False`` here and
        checks the range against the *model's* layer count after the fingerprint comparison, so a probe for
        another model is refused as such, not for a band beyond the layer count it claims.
        """
        if not _is_int(self.layer) or self.layer < 0:
            raise ProbeError(f"probe metadata: bad layer {self.layer!r}")
        if not self.bands:
            raise ProbeError("probe metadata: no skip bands")
        n_layers = fingerprint_int(self.model_fingerprint, "num_layers")
        for b in self.bands:
            if (not isinstance(b, (list, tuple)) or len(b) != 2
                    or not all(_is_int(x) for x in b) or b[0] > b[1]):
                raise ProbeError(f"probe metadata: bad band {b!r}")
            if b[0] < self.layer:
                raise ProbeError(f"probe metadata: band {band_name(b)} starts before probe layer {self.layer}")
        if check_layers:
            self.check_layers(n_layers)
        if self.head not in HEADS:
            raise ProbeError(f"probe metadata: unknown head {self.head!r} (expected one of {HEADS})")
        if not self.targets or any(t not in TARGETS for t in self.targets):
            raise ProbeError(f"probe metadata: bad targets {self.targets!r} (expected a subset of {TARGETS})")
        if self.score_target not in self.targets:
            raise ProbeError(f"probe metadata: score_target {self.score_target!r} not among targets {self.targets}")

    def check_layers(self, n_layers: int) -> None:
        """Every band ends inside a model of ``n_layers`` layers (0 = unknown: no check)."""
        for b in self.bands:
            if n_layers and b[1] >= n_layers:
                raise ProbeError(f"probe metadata: band {band_name(b)} beyond the model's {n_layers} layers")

    def to_json(self) -> str:
        from sedac.provenance import to_jsonable

        d = to_jsonable(self)
        return json.dumps(d, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "ProbeMeta":
        try:
            d = json.loads(text, parse_constant=_reject_constant)  # no NaN/Infinity: to_json could not re-save it
        except (ValueError, RecursionError) as exc:
            raise ProbeError(f"probe metadata is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ProbeError("probe metadata is not a JSON object")
        version = d.get("format_version")
        if not _is_int(version):
            raise ProbeError("probe metadata has no integer format_version")
        if version > FORMAT_VERSION:
            raise ProbeError(
                f"probe format version {version} is newer than this sedac understands ({FORMAT_VERSION}); upgrade sedac"
            )
        required = ("model_fingerprint", "layer", "bands")
        missing = [k for k in required if k not in d]
        if missing:
            raise ProbeError(f"probe metadata lacks {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__}
        try:
            meta = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as exc:
            raise ProbeError(f"probe metadata malformed: {exc}") from None
        for name, typ in (("model_fingerprint", dict), ("training", dict), ("calibration", dict),
                          ("provenance", dict), ("targets", list), ("bands", list), ("soft", dict)):
            if not isinstance(getattr(meta, name), typ):
                raise ProbeError(f"probe metadata: {name} must be a {typ.__name__}")
        meta.bands = [list(b) if isinstance(b, (list, tuple)) else b for b in meta.bands]
        meta.validate(check_layers=False)  # the range is checked when loading, against the model if one is given
        return meta


def expected_shapes(meta: ProbeMeta, hidden: int) -> dict[str, tuple[int, ...]]:
    k = len(meta.outputs)
    shapes: dict[str, tuple[int, ...]] = {"norm.mean": (hidden,), "norm.std": (hidden,), "head.bias": (k,)}
    if meta.head == "linear":
        shapes["head.weight"] = (k, hidden)
    else:
        if not isinstance(meta.rank, int) or meta.rank < 1:
            raise ProbeError(f"probe metadata: low-rank head needs a positive integer rank, got {meta.rank!r}")
        shapes["head.down"] = (meta.rank, hidden)
        shapes["head.up"] = (k, meta.rank)
    if meta.soft:
        q = meta.soft.get("quantiles")
        n = fingerprint_int(meta.model_fingerprint, "num_layers")
        if not _is_int(q) or q < 3 or not n:
            raise ProbeError(f"probe metadata: soft.quantiles must be an integer >= 3 with a known layer count, got {q!r}")
        shapes["soft.table"] = (n, 2, q - 2)
    return shapes


def save_probe_file(path: str | Path, meta: ProbeMeta, tensors: dict[str, Any]) -> Path:
    """Validate and write atomically (temp file + rename)."""
    import torch
    from safetensors.torch import save

    meta.validate()
    hidden = int(tensors["norm.mean"].shape[0])
    want = expected_shapes(meta, hidden)
    if set(tensors) != set(want):
        raise ProbeError(f"probe tensors {sorted(tensors)} do not match the head layout {sorted(want)}")
    clean = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu", torch.float32).contiguous()
        if tuple(t.shape) != want[name]:
            raise ProbeError(f"tensor {name} has shape {tuple(t.shape)}, expected {want[name]}")
        if not torch.isfinite(t).all():
            raise ProbeError(f"tensor {name} contains NaN/Inf; refusing to save")
        clean[name] = t
    data = save(clean, metadata={"sedac": meta.to_json()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _read_header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise ProbeError("probe file is truncated (shorter than the 8-byte safetensors header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise ProbeError(f"probe file is corrupt or truncated (header length {n} vs file size {len(data)})")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProbeError("probe file is corrupt: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ProbeError("probe file is corrupt: the safetensors header is not a JSON object")
    return header


def read_probe_file(path: str | Path) -> tuple[ProbeMeta, dict[str, Any]]:
    """Read and structurally validate a probe file. Never unpickles; only :class:`ProbeError` escapes."""
    import torch
    from safetensors.torch import load

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ProbeError(f"cannot read probe {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise ProbeError(f"probe path {path} is not a file")
    if size > MAX_FILE_BYTES:
        raise ProbeError(f"probe {path} is {size} bytes; larger than any sane probe ({MAX_FILE_BYTES})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProbeError(f"cannot read probe {path}: {exc.strerror or exc}") from None
    header = _read_header(data)
    md = header.get("__metadata__")
    if not isinstance(md, dict) or not isinstance(md.get("sedac"), str):
        raise ProbeError(f"{path} is a safetensors file but not a sedac probe (no 'sedac' metadata)")
    meta = ProbeMeta.from_json(md["sedac"])
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types on malformed payloads
        raise ProbeError(f"probe {path} is corrupt: {type(exc).__name__}: {exc}") from None
    mean = tensors.get("norm.mean")
    if mean is None or mean.dim() != 1:
        raise ProbeError(f"probe {path} lacks a 1-D norm.mean tensor")
    want = expected_shapes(meta, int(mean.shape[0]))
    if set(tensors) != set(want):
        raise ProbeError(f"probe {path} has tensors {sorted(tensors)}, expected {sorted(want)}")
    out = {}
    for name, t in tensors.items():
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ProbeError(f"probe tensor {name} has dtype {t.dtype}; expected a float type")
        if tuple(t.shape) != want[name]:
            raise ProbeError(f"probe tensor {name} has shape {tuple(t.shape)}, expected {want[name]}")
        t = t.to(torch.float32)
        if not torch.isfinite(t).all():
            raise ProbeError(f"probe tensor {name} contains NaN or Inf")
        out[name] = t
    if not bool((out["norm.std"] > 0).all()):
        raise ProbeError("probe tensor norm.std has non-positive entries")
    hidden = fingerprint_int(meta.model_fingerprint, "hidden_size")
    if hidden and hidden != int(mean.shape[0]):
        raise ProbeError(f"probe width {mean.shape[0]} != fingerprint hidden size {hidden}")
    return meta, out


def fingerprint_mismatch(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    keys = ("architecture", "hidden_size", "num_layers", "vocab_size", "config_hash")
    return [f"{k}: probe has {got.get(k)!r}, model has {expected.get(k)!r}" for k in keys
            if expected.get(k) != got.get(k)]


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
