"""jinterp: CNN-interpretability methods in JAX.

Data flows one way: data -> backbone -> features -> method -> metrics -> report (see DESIGN.md).
"""

from jinterp import errors
from jinterp.errors import JinterpError

__version__ = "0.1.0"

__all__ = ["JinterpError", "errors", "__version__"]
