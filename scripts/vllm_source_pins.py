"""Digests of the vLLM functions sedac mirrors (sedac.runtime.vllm_checks.PINNED), for a vLLM release.

    python scripts/vllm_source_pins.py                     # the installed vLLM (imports it)
    python scripts/vllm_source_pins.py PATH/TO/vllm        # an unpacked vLLM package, without importing it

The offline path reproduces ``inspect.getsourcelines`` (first decorator line, then ``inspect.getblock``),
so both print the same digests; paste them into ``PINNED`` under the release's version.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
from pathlib import Path

from sedac.runtime.vllm_checks import PINNED, digest_lines, source_digest

FILES = {"Llama": "llama", "Qwen2": "qwen2", "Qwen3": "qwen3", "Mistral": "mistral"}


def _module_of(qualname: str) -> str:
    cls = qualname.split(".")[0]
    return next(m for p, m in sorted(FILES.items(), key=lambda kv: -len(kv[0])) if cls.startswith(p))


def offline(pkg: Path) -> dict[str, str]:
    out = {}
    for qualname in PINNED:
        cls_name, fn_name = qualname.split(".")
        path = pkg / "model_executor" / "models" / f"{_module_of(qualname)}.py"
        lines = path.read_text().splitlines(keepends=True)
        cls = next(n for n in ast.parse("".join(lines)).body if isinstance(n, ast.ClassDef) and n.name == cls_name)
        fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == fn_name)
        first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
        out[qualname] = digest_lines(inspect.getblock(lines[first - 1:]))
    return out


def installed() -> dict[str, str]:
    import importlib

    out = {}
    for qualname in PINNED:
        cls_name, fn_name = qualname.split(".")
        mod = importlib.import_module(f"vllm.model_executor.models.{_module_of(qualname)}")
        out[qualname] = source_digest(getattr(getattr(mod, cls_name), fn_name))
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        pkg = Path(sys.argv[1])
        ver = next((p.name.split("-")[1].removesuffix(".dist-info") for p in pkg.parent.glob("vllm*-*.dist-info")), "?")
        print(json.dumps({"vllm": ver, "digests": offline(pkg)}, indent=1))
    else:
        import vllm

        print(json.dumps({"vllm": vllm.__version__, "digests": installed()}, indent=1))
