"""Moved to :mod:`jinterp.bench.converted` (installed with jinterp); an alias for the old path."""

import sys

from jinterp.bench import converted as _real

if __name__ == "__main__":
    _real.main()
else:
    globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})
    sys.modules[__name__] = _real
