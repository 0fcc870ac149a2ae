"""jinterp.report."""
