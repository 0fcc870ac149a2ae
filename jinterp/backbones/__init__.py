"""jinterp.backbones."""
