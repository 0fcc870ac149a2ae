"""jinterp.data."""
