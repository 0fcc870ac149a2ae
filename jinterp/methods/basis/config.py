"""Configuration of ``jinterp basis``: which layer, which bases (natural, random rotation, UIBE, IBD), how much data."""

from __future__ import annotations

import dataclasses

from jinterp.core.config import TrainBackboneConfig, check_field_types
from jinterp.errors import ConfigError
from jinterp.methods.basis.ibd import IBDConfig
from jinterp.methods.basis.uibe import UIBEConfig

METHODS = ("natural", "random", "uibe", "ibd")


@dataclasses.dataclass(frozen=True)
class BasisConfig:
    """Interpretable-basis extraction and Network-Dissection scoring (spec ``uibe_and_metrics.md``).

    ``data`` is a ``jinterp.data.load`` spec with concept annotations (synthparts, ``broden:PATH``); the train split
    fits the bases and labels the directions, the test split scores them (S¹/S², spec §4.2). ``weights`` is a saved
    variables file; "" trains ``backbone`` (a TrainBackboneConfig) first into ``<workdir>/backbone``.
    ``seg_scale`` is the label resolution relative to the image (NetDissect: 1/2). ``fit_pixels`` caps the pixels
    UIBE and IBD are fitted on (a random subset, drawn per image batch while streaming). ``category_rule``: which
    images count toward a unit's activation in the IoU denominator of a concept (spec §4.1 step 3): ``"paper"`` —
    those carrying a label of the concept's category (the paper, QND); ``"netdissect"`` — only those where the unit's
    active region overlaps such a label (NetDissect-Lite, to match its outputs). ``label_chunk``: concept labels are
    built this many images at a time while tallying (memory), rounded down to whole batches.
    """

    arch: str = "convnet"
    weights: str = ""
    model: str = ""  # a user model (FILE.py:FACTORY or a saved .npz) in place of arch
    data: str = "synthparts"
    layer: str = "relu4"
    methods: tuple[str, ...] = METHODS
    categories: tuple[str, ...] = ()          # concept categories; () = all annotated (synthparts: object/part/...)
    n_train: int = 2000                       # images (0 = the whole split)
    n_test: int = 1000
    seg_scale: float = 0.5
    quantile: float = 0.005                   # NetDissect top quantile for bases without thresholds
    category_rule: str = "paper"              # IoU denominator: "paper" (QND) or "netdissect" (NetDissect-Lite)
    label_chunk: int = 512                    # images whose concept labels are built at once while tallying
    batch_size: int = 64
    fit_pixels: int = 200_000
    figure_directions: int = 6
    figure_images: int = 5
    uibe: UIBEConfig = dataclasses.field(default_factory=UIBEConfig.paper)
    ibd: IBDConfig = dataclasses.field(default_factory=IBDConfig.paper)
    backbone: TrainBackboneConfig = dataclasses.field(default_factory=TrainBackboneConfig.tiny)
    seed: int = 0
    # Adebayo et al.'s model-randomization check: the backbone re-initialized (same architecture) before the bases
    # are fitted; a score that survives it is not about what the network learned (results carry the flag)
    randomize_backbone: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)

    @classmethod
    def paper(cls) -> BasisConfig:
        return cls()

    @classmethod
    def tiny(cls) -> BasisConfig:
        """Seconds to a minute or two on a 2-core CPU (plus the backbone's training when no weights are given)."""
        return cls(data="synthparts:n_train=3000,n_test=600", n_train=600, n_test=300, batch_size=50,
                   fit_pixels=20_000, uibe=UIBEConfig(batch_size=2048, epochs=15, lr=0.01, plateau_patience=5,
                                                      plateau_cooldown=2, restarts=2),
                   ibd=IBDConfig.tiny())

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ConfigError(f"unknown basis method(s) {bad or '(none)'}; choose from {METHODS}")
        if not 0 < self.quantile < 1:
            raise ConfigError(f"quantile must lie in (0, 1), got {self.quantile}")
        if not 0 < self.seg_scale <= 1:
            raise ConfigError(f"seg_scale must lie in (0, 1], got {self.seg_scale}")
        from jinterp.metrics.dissection import CATEGORY_RULES

        if self.category_rule not in CATEGORY_RULES:
            raise ConfigError(f"category_rule={self.category_rule!r} unknown; use one of {list(CATEGORY_RULES)} "
                              "(paper: the paper's rule; netdissect: NetDissect-Lite's)")
        if self.label_chunk < 1:
            raise ConfigError(f"label_chunk must be >= 1 (images per concept-label chunk), got {self.label_chunk}")
        if self.batch_size < 1 or self.n_train < 0 or self.n_test < 0 or self.fit_pixels < 1:
            raise ConfigError("batch_size and fit_pixels must be positive, n_train/n_test >= 0")
        self.uibe.validate()
        self.ibd.validate()
