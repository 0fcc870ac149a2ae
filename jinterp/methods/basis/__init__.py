"""Interpretable bases: UIBE (unsupervised) and IBD (supervised baseline)."""
