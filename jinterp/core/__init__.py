"""jinterp.core."""
