"""Evaluation metrics shared by the methods (spec ``uibe_and_metrics.md`` and the method specs).

``dissection`` (quantile thresholds, IoU tallies, detectors, S1/S2), ``localization`` (location instability,
normalized distance, part localization), ``information`` (the mutual-information score, gate density),
``reconstruction`` (MSE, SSE per image, PSNR).
"""

from jinterp.metrics import dissection, information, localization, reconstruction
from jinterp.metrics.dissection import ConceptSet, DissectionResult, dissect, s1_s2
from jinterp.metrics.information import gate_density, mutual_info_classif, mutual_information_score
from jinterp.metrics.localization import location_instability, normalized_distance, part_localization
from jinterp.metrics.reconstruction import mse, psnr, sse_per_image

__all__ = ["ConceptSet", "DissectionResult", "dissect", "dissection", "gate_density", "information", "localization",
           "location_instability", "mse", "mutual_info_classif", "mutual_information_score", "normalized_distance",
           "part_localization", "psnr", "reconstruction", "s1_s2", "sse_per_image"]
