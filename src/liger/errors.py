"""Errors a user can cause. Each message names the cause and the fix; the CLI prints it without a traceback."""

from __future__ import annotations


class LigerError(Exception):
    """Base class of every error liger raises on bad input."""


class UnsupportedModelError(LigerError, ValueError):
    """The model's architecture is not in liger's table of supported architectures."""


class ConfigError(LigerError, ValueError):
    """A LigerConfig value (or CLI flag) is out of range or inconsistent with the model."""


class CheckpointError(LigerError, OSError):
    """A path does not exist, or is not a (complete) liger checkpoint."""


class DataError(LigerError, ValueError):
    """A dataset is empty, unreadable or wrongly formatted."""
