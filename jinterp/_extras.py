"""Optional dependencies, imported only where they are needed, with a one-line error naming the extra to install.

TFDS (``tensorflow-datasets`` + ``array-record``) is the ``tfds`` extra: only the ``tfds:`` reader and
:func:`jinterp.data.prepare_synthparts` use it, so ``pip install jinterp`` works without it.
"""

from __future__ import annotations

from types import ModuleType

from jinterp.errors import JinterpError

# Top-level modules whose absence means "the tfds extra is not installed".
_TFDS_MODULES = ("tensorflow_datasets", "array_record", "etils")


class MissingExtraError(JinterpError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install 'jinterp[...]'`` to run."""


def require_tfds(what: str) -> ModuleType:
    """``import tensorflow_datasets``; raises MissingExtraError naming ``what`` needs it when it is absent."""
    try:
        import tensorflow_datasets
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _TFDS_MODULES:
            raise  # a broken installation, not a missing extra: keep the real error
        raise MissingExtraError(
            f"{what} needs TensorFlow Datasets, which is not installed ({e.name}); install it with "
            "pip install 'jinterp[tfds]'") from None
    return tensorflow_datasets
