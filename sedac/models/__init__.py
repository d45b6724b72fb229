"""Model resolution: aliases, the embedded default model, and loading helpers."""

from sedac.models.registry import ALIASES, DEFAULT_MODEL, list_models, pull, resolve_model

__all__ = ["ALIASES", "DEFAULT_MODEL", "list_models", "pull", "resolve_model"]
