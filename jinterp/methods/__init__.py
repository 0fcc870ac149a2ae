"""jinterp.methods."""
