"""Moved to :mod:`jinterp.bench.torch_graph` (installed with jinterp); an alias for the old path."""

import sys

from jinterp.bench import torch_graph as _real

globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})
sys.modules[__name__] = _real
