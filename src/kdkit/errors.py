"""Exception types: every user-facing failure in kdkit is a ``KdkitError``."""

from __future__ import annotations


class KdkitError(Exception):
    """Base class for errors caused by user input (config, data, checkpoints, flags)."""


class ConfigError(KdkitError):
    """A configuration file or override is invalid."""


class DataError(KdkitError):
    """A data file is missing, truncated, corrupt or of an unexpected format."""


class CheckpointError(KdkitError):
    """A checkpoint is missing, corrupt, unsafe or does not match the model."""


class ModelError(KdkitError):
    """A model name, option or architecture mismatch is invalid."""


class RunDirError(KdkitError):
    """A run directory cannot be used without losing the user's files."""
