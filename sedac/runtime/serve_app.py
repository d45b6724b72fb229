"""API-server side of ``sedac serve``: vLLM imports this module through ``--middleware``.

:class:`SedacServeMiddleware` is a pure ASGI middleware; vLLM adds it last, so it runs first:

* **API keys** (``SEDAC_API_KEYS``, a JSON list set by :func:`sedac.runtime.serve.prepare` from
  ``--api-key`` or ``VLLM_API_KEY``): every HTTP and websocket route except ``/health`` needs
  ``Authorization: Bearer <key>`` and answers 401 otherwise — ``/invocations``, ``/tokenize``,
  ``/metrics``, ``/sedac/stats``, ``/docs``, ``/openapi.json`` included (vLLM's own check covers only
  ``/v1``, ``/v2``, ``/inference``, ``/cohere``). ``OPTIONS`` (CORS pre-flight, executes no route) passes,
  as in vLLM.
* ``GET /sedac/stats``: the worker's latest skip-counter snapshot, without local paths.
* ``/metrics``: vLLM's Prometheus endpoint; the sedac collector's snapshot is refreshed first.
* ``GET /v1/models``: vLLM reports the resolved model folder as ``root``; it is replaced by the model id.

The stats file is read in a worker thread (never on the event loop), through
:func:`sedac.runtime.stats.read_stats` (no symlinks, regular file owned by us, size cap).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from typing import Any

STATS_ENV = "SEDAC_STATS_FILE"
API_KEYS_ENV = "SEDAC_API_KEYS"
MODEL_PATH_ENV = "SEDAC_MODEL_PATH"
OPEN_PATHS = frozenset({"/health"})

_COLLECTOR: Any = None


def _install_collector() -> Any:
    """Register the sedac Prometheus collector once per process (vLLM's /metrics serves the default registry)."""
    global _COLLECTOR
    if _COLLECTOR is None:
        from prometheus_client import REGISTRY

        from sedac.runtime.stats import SkipStatsCollector

        _COLLECTOR = SkipStatsCollector(os.environ.get(STATS_ENV))
        REGISTRY.register(_COLLECTOR)
    return _COLLECTOR


def _token_hashes() -> list[bytes]:
    raw = os.environ.get(API_KEYS_ENV)
    keys = json.loads(raw) if raw else []
    return [hashlib.sha256(str(k).encode()).digest() for k in keys if k]


def _error(status: int, message: str, kind: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class SedacServeMiddleware:
    """Authentication on every route but ``/health``, ``/sedac/stats``, fresh ``/metrics``, path-free ``/v1/models``."""

    def __init__(self, app) -> None:
        self.app = app
        self.tokens = _token_hashes()
        self.model_path = os.environ.get(MODEL_PATH_ENV)
        self.collector = _install_collector() if os.environ.get(STATS_ENV) else None

    def _authorized(self, scope) -> bool:
        from starlette.datastructures import Headers

        scheme, _, given = (Headers(scope=scope).get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(given.encode()).digest()
        ok = False
        for t in self.tokens:
            ok |= secrets.compare_digest(digest, t)
        return ok

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]
        method = scope.get("method")
        if self.tokens and method != "OPTIONS" and path not in OPEN_PATHS and not self._authorized(scope):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _error(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                "authentication_error")(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if path == "/sedac/stats" and self.collector is not None:
            if method != "GET":
                return await _error(405, "use GET /sedac/stats", "method_not_allowed")(scope, receive, send)
            return await self._stats(scope, receive, send)
        if path.startswith("/metrics") and self.collector is not None:
            import anyio

            await anyio.to_thread.run_sync(self.collector.refresh)
        if path == "/v1/models" and method == "GET" and self.model_path:
            return await self.app(scope, receive, self._models_send(send))
        return await self.app(scope, receive, send)

    async def _stats(self, scope, receive, send) -> None:
        import anyio
        from starlette.responses import JSONResponse

        from sedac.runtime.stats import public_snapshot

        snap = await anyio.to_thread.run_sync(self.collector.refresh)
        await JSONResponse(public_snapshot(snap))(scope, receive, send)

    def _models_send(self, send):
        """Buffer the /v1/models response and replace ``root`` (the local model folder) by the model id."""
        start: dict[str, Any] = {}
        body = bytearray()

        async def wrapped(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                return await send(message)
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            out = bytes(body)
            try:
                data = json.loads(out)
                for card in data.get("data", []):
                    if isinstance(card, dict) and card.get("root") == self.model_path:
                        card["root"] = card.get("id")
                out = json.dumps(data).encode()
            except (ValueError, AttributeError, TypeError):
                pass  # not the JSON we know: pass it on unchanged
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(out)).encode())]})
            await send({"type": "http.response.body", "body": out, "more_body": False})

        return wrapped
