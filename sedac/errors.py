"""The project's own error types.

Every failure a user can cause (bad input, missing model, corrupt probe, ...) raises a
:class:`SedacError` subclass with a message that says what was wrong and what to do. The CLI turns
these into a one-line message and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations


class SedacError(Exception):
    """Base class for user-facing errors (printed without a traceback, exit code 2)."""

    exit_code = 2


class ConfigError(SedacError):
    """A flag, YAML key or argument has an invalid value."""


class ModelError(SedacError):
    """A model cannot be found, pulled, converted or adapted."""


class ProbeError(SedacError):
    """A probe file is missing, corrupt, or does not match the model."""


class DataError(SedacError):
    """A dataset is missing, empty, or lacks the requested field."""


class CalibrationError(SedacError):
    """Calibration could not certify any threshold at the requested risk level."""

    exit_code = 3
