"""Measurements of the oneDNN-via-FFI convolution route (issue #21; ``jinterp/nn/_onednn``)."""
