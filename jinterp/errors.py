"""jinterp's error types.

Every bad input a user can give (a wrong shape, an unknown layer, a weight file for another architecture, a
corrupt checkpoint, a malformed config) raises a subclass of :class:`JinterpError` whose message names the
thing that is wrong and how to fix it. They subclass the matching builtin (``ValueError``, ``KeyError``,
``FileNotFoundError``) so generic handlers keep working.
"""

from __future__ import annotations


class JinterpError(Exception):
    """Base class of every error jinterp raises on purpose."""


class ConfigError(JinterpError, ValueError):
    """A config field or command-line override is unknown or has the wrong type/value."""


class ShapeError(JinterpError, ValueError):
    """An array has the wrong shape, dtype or value range."""


class LayerError(JinterpError, KeyError):
    """A layer name does not exist in the backbone; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message; print it plainly.
        return str(self.args[0]) if self.args else ""


class WeightsError(JinterpError, ValueError):
    """A weight file or state_dict does not match the architecture."""


class DataError(JinterpError, ValueError):
    """A data set is missing, empty, truncated or inconsistent."""


class MissingFileError(JinterpError, FileNotFoundError):
    """A path the user gave does not exist."""


class CheckpointError(JinterpError, RuntimeError):
    """A checkpoint is corrupt or incompatible with the run."""


class TrainingError(JinterpError, RuntimeError):
    """Training diverged (NaN/Inf loss) or cannot continue."""


class StorageError(JinterpError, OSError):
    """A file or directory cannot be written: the disk is full, the work directory is read-only, or a file
    stands where a directory should be. What was saved before stays as it was."""

    def __str__(self) -> str:  # OSError would format (errno, strerror); print the message plainly.
        return str(self.args[0]) if self.args else ""


class ModelError(JinterpError, ValueError):
    """A user's model cannot be converted or run: an operation jinterp cannot lower, data-dependent control flow,
    a factory that does not return a model. The message names the operation, the module path and the fix."""
