"""jinterp.metrics."""
