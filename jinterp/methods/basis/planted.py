"""Synthetic pixel features with planted, known concept directions (spec ``uibe_and_metrics.md`` §5.3).

The generator mirrors the successor paper's synthetic setup (EDDP §5.1), with the directions made orthonormal
because UIBE's basis is orthogonal (spec §5.3):

    x_p = Σ_c α_{p,c} s_c + Σ_f β_{p,f} d_f + μ·1

* ``s_c`` (concepts) and ``d_f`` (distractors) are jointly orthonormal random directions in ``R^D``
  (D = 16, 3 concepts, 2 distractors by default), so the remaining ``D − C − F`` directions carry no variance.
* Each pixel carries exactly one concept (EDDP: "each pixel representation corresponds to a single concept"):
  ``α_{p,c} ~ U(hi)`` for its concept and ``U(lo)`` for the others; ``lo = (0, 2.5)``, ``hi = (2.5, 5)`` in the
  spec. ``labels="independent"`` instead draws each concept independently with probability ``occupancy``.
* ``β_{p,f} ~ U(0, distractor_max)`` independent of the labels (5 in the spec); bias ``μ = 10``.

:func:`generate` returns the pixels, the labels and the planted directions; :func:`recovery` scores a learned
basis against them (best |cosine| per concept, with a one-to-one matching).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple

import numpy as np

from jinterp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PlantedConfig:
    dim: int = 16
    num_concepts: int = 3
    num_distractors: int = 2
    num_pixels: int = 20000
    lo: tuple[float, float] = (0.0, 2.5)     # α when the pixel does not carry the concept
    hi: tuple[float, float] = (2.5, 5.0)     # α when it does
    distractor_max: float = 5.0
    bias: float = 10.0
    noise: float = 0.0                       # std of Gaussian noise in the D − C − F directions no factor uses
    labels: str = "exclusive"                # "exclusive": one concept per pixel; "independent": Bernoulli each
    occupancy: float = 0.3                   # per-concept probability for labels="independent"
    seed: int = 0

    @classmethod
    def spec(cls, **kw) -> PlantedConfig:
        """Exactly the spec's setup (§5.3): touching supports U(0, 2.5) / U(2.5, 5), nothing outside the
        concept and distractor directions."""
        return cls(**kw)

    @classmethod
    def separable(cls, **kw) -> PlantedConfig:
        """The spec's setup with a margin between absent and present signal values (U(0, 1.5) / U(3.5, 5)) and
        Gaussian noise (std 0.5) in the directions no factor uses: here the planted basis is the minimum of
        UIBE's objective (see ``experiments/README.md``, "Interpretable basis")."""
        return cls(**{"lo": (0.0, 1.5), "hi": (3.5, 5.0), "noise": 0.5, **kw})

    def validate(self) -> None:
        if self.num_concepts + self.num_distractors > self.dim:
            raise ConfigError(f"{self.num_concepts} concepts + {self.num_distractors} distractors do not fit "
                              f"orthonormally in R^{self.dim}; raise dim.")
        if self.labels not in ("exclusive", "independent"):
            raise ConfigError(f"labels must be 'exclusive' or 'independent', got {self.labels!r}")


class Planted(NamedTuple):
    pixels: np.ndarray        # (P, D) float32
    labels: np.ndarray        # (P, C) bool: pixel carries concept c
    concepts: np.ndarray      # (D, C) orthonormal planted concept directions
    distractors: np.ndarray   # (D, F)
    alpha: np.ndarray         # (P, C) signal values


def generate(cfg: PlantedConfig = PlantedConfig()) -> Planted:
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    c, f, p = cfg.num_concepts, cfg.num_distractors, cfg.num_pixels
    basis, _ = np.linalg.qr(rng.normal(size=(cfg.dim, c + f)))
    s, d = basis[:, :c], basis[:, c:]
    if cfg.labels == "exclusive":
        labels = np.eye(c, dtype=bool)[rng.integers(0, c, p)]
    else:
        labels = rng.random((p, c)) < cfg.occupancy
    alpha = np.where(labels, rng.uniform(*cfg.hi, (p, c)), rng.uniform(*cfg.lo, (p, c)))
    beta = rng.uniform(0.0, cfg.distractor_max, (p, f))
    x = alpha @ s.T + beta @ d.T + cfg.bias
    if cfg.noise and cfg.dim > c + f:
        full, _ = np.linalg.qr(np.concatenate([basis, rng.normal(size=(cfg.dim, cfg.dim - c - f))], 1))
        x = x + (rng.normal(size=(p, cfg.dim - c - f)) * cfg.noise) @ full[:, c + f:].T
    return Planted(x.astype(np.float32), labels, s, d, alpha)


def recovery(basis: np.ndarray, concepts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of basis columns to planted concepts maximising the summed |cosine|.

    Returns ``(cosines (C,), matched column per concept (C,))``. Directions are compared up to sign.
    """
    cos = np.abs(np.asarray(concepts).T @ np.asarray(basis))          # (C, I)
    cos /= np.linalg.norm(concepts, axis=0)[:, None] * np.linalg.norm(basis, axis=0)[None, :]
    n_c, n_i = cos.shape
    if n_i < n_c:
        raise ConfigError(f"a basis of {n_i} directions cannot match {n_c} concepts one to one.")
    if n_c <= 6:
        best = max(itertools.permutations(range(n_i), n_c), key=lambda perm: cos[range(n_c), perm].sum())
        cols = np.asarray(best)
    else:  # greedy for many concepts
        cols = np.full(n_c, -1)
        work = cos.copy()
        for _ in range(n_c):
            i, j = np.unravel_index(np.argmax(work), work.shape)
            cols[i] = j
            work[i, :] = -1
            work[:, j] = -1
    return cos[np.arange(n_c), cols], cols
