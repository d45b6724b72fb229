"""Generators of malformed probe files, for property tests and the long fuzz run.

Everything here builds *bytes* (a whole ``.safetensors`` probe file) without going through
:func:`sedac.probes.format.save_probe_file`, so it can produce files the saver would refuse.
Contract of the loader under test (:func:`sedac.probes.load_probe`): for every input produced
here it either returns a valid probe or raises :class:`sedac.errors.ProbeError` — never another
exception, never a hang, never a call into pickle / ``torch.load``.

Reusable pieces:

* :func:`valid_parts` / :func:`encode` — a valid probe as (header dict, payload) and the safetensors
  encoder (8-byte little-endian header length, JSON header, raw payload);
* :data:`MUTATORS` — named functions ``(rng) -> bytes``, one per class of damage (bad header,
  truncation, wrong dtype/shape, NaN/Inf, oversized metadata, wrong metadata types, ...);
* :func:`malformed_probe` — pick one mutator at random;
* :func:`time_limit` and :func:`forbid_unpickling` — guards for a fuzz loop.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

FP = {"architecture": "LlamaForCausalLM", "hidden_size": 8, "num_layers": 6, "vocab_size": 100,
      "config_hash": "fuzz"}
META_FIELDS = ("model_fingerprint", "layer", "bands", "head", "rank", "targets", "score_target",
               "training", "calibration", "provenance", "format_version")
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I32": np.int32, "I64": np.int64,
           "U8": np.uint8, "BOOL": np.bool_, "I8": np.int8}


class FuzzTimeout(BaseException):
    """Raised by :func:`time_limit`; a BaseException so that no ``except Exception`` swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`FuzzTimeout` if the block runs longer than ``seconds`` (main thread, POSIX only)."""
    def _fire(signum, frame):  # noqa: ARG001
        raise FuzzTimeout(f"loader ran longer than {seconds}s")

    old = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def forbid_unpickling() -> Iterator[list[str]]:
    """Patch pickle / ``torch.load`` / ``numpy.load`` to record and refuse every call.

    Yields the list of recorded call names; a loader that never unpickles leaves it empty. The
    patched functions raise, but the list is the evidence: a loader may wrap the error.
    """
    import pickle

    import torch
    import torch.serialization

    calls: list[str] = []
    targets = [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
               (torch.serialization, "load"), (np, "load")]
    saved = [(mod, name, getattr(mod, name)) for mod, name in targets]

    def _make(label: str) -> Callable[..., Any]:
        def _refuse(*args, **kwargs):
            calls.append(label)
            raise RuntimeError(f"{label} called during probe loading")
        return _refuse

    try:
        for mod, name, _ in saved:
            setattr(mod, name, _make(f"{mod.__name__}.{name}"))
        yield calls
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


# ----------------------------------------------------------------------------- building
def valid_parts(rng: random.Random | None = None, d: int = 8, head: str = "linear",
                fingerprint: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A valid probe as (metadata dict, float32 tensors) with bands ``[[3, 5]]`` at layer 2."""
    rng = rng or random.Random(0)
    meta = {"model_fingerprint": dict(fingerprint or FP, hidden_size=d), "layer": 2, "bands": [[3, 5]],
            "head": head, "rank": 2 if head == "lowrank" else None, "targets": ["entropy", "safety"],
            "score_target": "safety", "training": {"metrics": {"val_auroc": 0.75}}, "calibration": {},
            "provenance": {"kind": "fuzz"}, "format_version": 1}
    k = 2
    g = np.random.default_rng(rng.randrange(2**32))
    t = {"norm.mean": g.standard_normal(d), "norm.std": g.random(d) + 0.5, "head.bias": g.standard_normal(k)}
    if head == "linear":
        t["head.weight"] = g.standard_normal((k, d))
    else:
        t["head.down"] = g.standard_normal((2, d))
        t["head.up"] = g.standard_normal((k, 2))
    return meta, {n: a.astype(np.float32) for n, a in t.items()}


def encode(meta: dict[str, Any] | str | None, tensors: dict[str, np.ndarray],
           header_extra: dict[str, Any] | None = None) -> bytes:
    """Encode a safetensors file by hand (any dtype/shape; ``meta`` may be a raw string)."""
    header: dict[str, Any] = {}
    if meta is not None:
        header["__metadata__"] = {"sedac": meta if isinstance(meta, str) else json.dumps(meta)}
    payload = b""
    for name, arr in sorted(tensors.items()):
        code = next(c for c, t in _DTYPES.items() if np.dtype(t) == arr.dtype)
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [len(payload), len(payload) + len(raw)]}
        payload += raw
    header.update(header_extra or {})
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    return struct.pack("<Q", len(hb)) + hb + payload


def valid_probe_bytes(seed: int = 0, head: str = "linear", d: int = 8) -> bytes:
    meta, t = valid_parts(random.Random(seed), d=d, head=head)
    return encode(meta, t)


def json_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (scalars, strings, small lists/dicts) for wrong-type fields."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 6:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {str(rng.randrange(99)): json_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if kind == 8:
        return rng.choice([0, -1, 2**63, 1e308, -0.0, float("nan"), float("inf")])
    return [None, True, rng.randint(-2**40, 2**40), rng.uniform(-1e9, 1e9), "", "x" * rng.randrange(50)][kind]


# ----------------------------------------------------------------------------- mutators
def _random_bytes(rng):
    return rng.randbytes(rng.randrange(0, 512))


def _bad_length(rng):
    data = valid_probe_bytes(rng.randrange(1000))
    return struct.pack("<Q", rng.choice([0, 1, 7, len(data), len(data) - 7, rng.randrange(2**20)])) + data[8:]


def _huge_length(rng):
    data = valid_probe_bytes(rng.randrange(1000))
    return struct.pack("<Q", rng.choice([2**63, 2**64 - 1, 2**32, 17 * 1024 * 1024])) + data[8:]


def _non_json_header(rng):
    body = rng.randbytes(rng.randrange(1, 200)) + b"\xff\xfe"
    return struct.pack("<Q", len(body)) + body + b"\0" * 32


def _json_non_object(rng):
    body = json.dumps(rng.choice([[], [1, 2], "str", 3, None, True, 1.5])).encode()
    return struct.pack("<Q", len(body)) + body


def _deep_nesting(rng):
    n = rng.choice([100, 1000, 5000, 100_000])
    body = (rng.choice(["[", '{"a":']) * n).encode()
    if rng.random() < 0.5:  # inside the sedac metadata string instead of the outer header
        meta, t = valid_parts(rng)
        return encode("[" * n + "]" * n, t)
    return struct.pack("<Q", len(body)) + body


def _truncated(rng):
    data = valid_probe_bytes(rng.randrange(1000), head=rng.choice(["linear", "lowrank"]))
    return data[:rng.randrange(len(data))]


def _bitflip(rng):
    data = bytearray(valid_probe_bytes(rng.randrange(1000)))
    for _ in range(rng.randrange(1, 8)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def _wrong_dtype(rng):
    meta, t = valid_parts(rng)
    name = rng.choice(sorted(t))
    t[name] = t[name].astype(_DTYPES[rng.choice(["F64", "I32", "I64", "U8", "BOOL", "I8", "F16"])])
    return encode(meta, t)


def _wrong_shape(rng):
    meta, t = valid_parts(rng)
    name = rng.choice(sorted(t))
    t[name] = rng.choice([np.float32(1.0).reshape(()), np.zeros((0,), np.float32), np.zeros((3, 3, 3), np.float32),
                          np.ones(rng.randrange(1, 20), np.float32), t[name].reshape(-1, 1)])
    return encode(meta, t)


def _extra_or_missing(rng):
    meta, t = valid_parts(rng, head=rng.choice(["linear", "lowrank"]))
    if rng.random() < 0.5:
        t.pop(rng.choice(sorted(t)))
    else:
        t[rng.choice(["head.weight", "head.down", "extra", "__pickle__", "norm.mean2"])] = np.ones(8, np.float32)
    return encode(meta, t)


def _non_finite(rng):
    meta, t = valid_parts(rng)
    name = rng.choice(sorted(t))
    flat = t[name].reshape(-1)
    flat[rng.randrange(flat.size)] = rng.choice([np.nan, np.inf, -np.inf])
    if name == "norm.std" and rng.random() < 0.5:
        flat[:] = rng.choice([0.0, -1.0])
    return encode(meta, t)


def _oversized_metadata(rng):
    meta, t = valid_parts(rng)
    meta["training"] = {"blob": "x" * rng.choice([1 << 20, 17 * 1024 * 1024])}
    return encode(meta, t)


def _wrong_meta_type(rng):
    meta, t = valid_parts(rng, head=rng.choice(["linear", "lowrank"]))
    for _ in range(rng.randrange(1, 4)):
        key = rng.choice(META_FIELDS + ("bands[0]", "fingerprint.hidden_size", "fingerprint.num_layers"))
        val = json_value(rng)
        if key == "bands[0]":
            meta["bands"] = [val]
        elif key.startswith("fingerprint."):
            if isinstance(meta.get("model_fingerprint"), dict):
                meta["model_fingerprint"][key.split(".")[1]] = val
        elif rng.random() < 0.15:
            meta.pop(key, None)
        else:
            meta[key] = val
    return encode(meta, t)


def _meta_not_sedac(rng):
    meta, t = valid_parts(rng)
    choice = rng.randrange(4)
    if choice == 0:
        return encode(None, t)
    if choice == 1:
        return encode(json_value(rng) if rng.random() < 0.5 else "not json {", t)
    if choice == 2:
        return encode(json.dumps(json_value(rng)), t)
    return encode(meta, t, header_extra={"__metadata__": json_value(rng)})


def _bad_offsets(rng):
    meta, t = valid_parts(rng)
    data = encode(meta, t)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = rng.choice(sorted(t))
    header[name]["data_offsets"] = rng.choice([[0, 10**12], [50, 10], [-1, 4], [0, 3], "x", [0]])
    if rng.random() < 0.3:
        header[name]["shape"] = rng.choice([[-1], [2**40, 2**40], "8", [8.5]])
    hb = json.dumps(header).encode()
    return struct.pack("<Q", len(hb)) + hb + data[8 + n:]


MUTATORS: dict[str, Callable[[random.Random], bytes]] = {
    "random_bytes": _random_bytes, "bad_length": _bad_length, "huge_length": _huge_length,
    "non_json_header": _non_json_header, "json_non_object": _json_non_object, "deep_nesting": _deep_nesting,
    "truncated": _truncated, "bitflip": _bitflip, "wrong_dtype": _wrong_dtype, "wrong_shape": _wrong_shape,
    "extra_or_missing_tensor": _extra_or_missing, "non_finite": _non_finite,
    "oversized_metadata": _oversized_metadata, "wrong_meta_type": _wrong_meta_type,
    "meta_not_sedac": _meta_not_sedac, "bad_offsets": _bad_offsets,
}


def malformed_probe(rng: random.Random) -> tuple[str, bytes]:
    """One malformed (or occasionally still valid) probe file: ``(mutator name, bytes)``."""
    name = rng.choice(sorted(MUTATORS))
    return name, MUTATORS[name](rng)
