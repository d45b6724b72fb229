"""``sedac collect``: per-token hidden states and skip labels, written as safetensors shards.

Public API: :class:`CollectConfig`, :func:`collect` (run), and the shard reader
:func:`sedac.collect.shards.open_shards` / :func:`sedac.collect.shards.load_shard`.
"""

from sedac.collect.config import CollectConfig

__all__ = ["CollectConfig", "collect"]


def collect(cfg: CollectConfig, **kw):
    """Run a collection (see :mod:`sedac.collect.run`); returns the final manifest."""
    from sedac.collect.run import collect as _collect

    return _collect(cfg, **kw)
