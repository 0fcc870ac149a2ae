"""Any CNN as a jinterp model: PyTorch modules (traced with torch.fx), Flax Linen and NNX modules, one weights
loader, and ``load_model`` for a built-in arch name or a ``FILE.py:FACTORY`` spec.

Every model here follows the backbone contract: ``model.apply(variables, images_nhwc, train=False)`` returns
``(logits, feats)`` with ``feats`` mapping layer names (module paths) to intermediates (NHWC for 4-D).

Importing this package does not import PyTorch; only converting a PyTorch model or reading a ``.pth`` does.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "from_torch": "jinterp.models.torch_fx",
    "TorchGraph": "jinterp.models.graph",
    "from_linen": "jinterp.models.flax_adapters",
    "from_nnx": "jinterp.models.flax_adapters",
    "LinenModel": "jinterp.models.flax_adapters",
    "NnxModel": "jinterp.models.flax_adapters",
    "save_model": "jinterp.models.serialize",
    "load_saved_model": "jinterp.models.serialize",
    "load_weights": "jinterp.models.weights",
    "read_state_dict": "jinterp.models.weights",
    "load_model": "jinterp.models.loader",
    "ModelInfo": "jinterp.models.loader",
    "check_layers": "jinterp.models.loader",
    "takes_edits": "jinterp.models.loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jinterp.models' has no attribute {name!r}")
