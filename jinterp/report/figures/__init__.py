"""Figures (matplotlib, Agg backend, PNG): one module per method, shared helpers in ``_common``."""

from jinterp.report.figures._common import image_grid, save, to_display

__all__ = ["image_grid", "save", "to_display"]
