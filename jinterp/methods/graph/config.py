"""Explanatory-graph configuration (spec ``explainer_and_graph.md`` §A2-A6, constants of ``getNetParameters.m``).

Graph layers are listed **bottom to top** (as the paper numbers them: graph layer 1 = the lowest); learning runs
top-down. Per-layer tuples (``density``, ``top_n``, ``top_m``, ``strides``, ``centers``) are aligned with
``layers``; ``top_n``/``top_m`` of the top layer are unused (it has no parents).
"""

from __future__ import annotations

import dataclasses
import math

from jinterp.core.config import check_field_types
from jinterp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    """Explanatory graph: node learning (EM, top-down), evaluation (instability, few-shot localization).

    Attributes (spec constant in brackets):
      arch, weights, data, seed: backbone, its saved variables ("" = train one first with
        ``TrainBackboneConfig.tiny()`` (``convnet``/``resnet20``) into ``<workdir>/backbone``), the data spec, root
        seed (node initialization and data sampling).
      faithful: reproduce the released code's quirks (§A12 list); False fixes them.
      randomize_backbone: re-initialize the backbone's weights (same architecture) before learning the graph: the
        model-randomization check of Adebayo et al. (NeurIPS 2018); a result that survives it does not depend on
        what the network learned.
      layers: graph layers, bottom to top, named as in ``jinterp.backbones.layer_names(arch)``; use pre-ReLU
        outputs where the arch has them (VGG ``conv4_2`` ..., convnet ``bn3``).
      density: nodes per filter K = ceil(H·W·density) [0.05, 0.05, 0.1, 0.1].
      top_n: parents per node M [15]; top_m: candidate-parent pool size [600].
      strides, centers: image pixels per cell and the 1-based pixel center of cell 1 per layer; empty = derive
        (stride = image size / map size, center = (stride + 1)/2, exact for "same" convs + 2×2 pools).
      iterations: EM iterations per layer [20]; eta: center step multiplier [1].
      candidates: candidate positions per axis S [6]; max_range: window half-size ≤ max_range·H/2 [0.3];
      deform_ratio: window half-size ≤ deform_ratio·σ [3]; init_delta: σ init and top prior std, ×H [0.15];
      map_delta: evidence-kernel std, ×H [0.025]; tau: background competitor weight [0.1];
      min_var_rate: fraction of lowest-variance upper nodes dropped from the pool [0.5];
      edge_cut_rate: upper nodes within edge_cut_rate·H of the border dropped [0.1].
      sigma_max_factor: σ_max = sigma_max_factor / √density cells, σ_min = σ_max / 10 [1].
      category: synthparts category whose images the graph explains (-1 = all images, like CUB's pooled birds);
        the negatives for feature normalization are images of the other categories (all images if -1).
      num_images, num_negatives: positive images (graph learning + evaluation) and negatives (feature std).
      image_size: image side fed to the backbone (synthparts is generated at this size).
      crop: crop each image to its object's bounding box and resize to ``image_size`` (as the released code does
        with annotated boxes); False keeps the full frame.
      stability_top_n, stability_units: location instability (graph-code variant) images per unit [20] and units
        per layer [167]; shots: annotated images for few-shot part localization [3]; transfer_top_t: units kept
        by the (reconstructed) transfer step.
      memory_mb: E-step working-memory budget; images are processed in chunks that fit it.
      backbone_steps: training steps when ``weights`` is "" (0 = the TrainBackboneConfig.tiny() default).
    """

    arch: str = "vgg16"
    weights: str = ""
    model: str = ""  # a user model (FILE.py:FACTORY or a saved .npz) in place of arch
    data: str = "synthparts"
    seed: int = 0
    faithful: bool = False
    randomize_backbone: bool = False
    layers: tuple[str, ...] = ("conv4_2", "conv4_3", "conv5_2", "conv5_3")
    density: tuple[float, ...] = (0.05, 0.05, 0.1, 0.1)
    top_n: tuple[int, ...] = (15, 15, 15, 0)
    top_m: tuple[int, ...] = (600, 600, 600, 0)
    strides: tuple[float, ...] = ()
    centers: tuple[float, ...] = ()
    iterations: int = 20
    eta: float = 1.0
    candidates: int = 6
    max_range: float = 0.3
    deform_ratio: float = 3.0
    init_delta: float = 0.15
    map_delta: float = 0.025
    tau: float = 0.1
    min_var_rate: float = 0.5
    edge_cut_rate: float = 0.1
    sigma_max_factor: float = 1.0
    category: int = 0
    num_images: int = 2000
    num_negatives: int = 1000
    image_size: int = 224
    crop: bool = True
    stability_top_n: int = 20
    stability_units: int = 167
    shots: int = 3
    transfer_top_t: int = 50
    memory_mb: int = 512
    backbone_steps: int = 0

    def __post_init__(self) -> None:
        check_field_types(self)

    @classmethod
    def paper(cls) -> GraphConfig:
        """The released code's VGG-16 setting: conv4_2/4_3/5_2/5_3 (pre-ReLU), K = 40/40/20/20, 20 iterations,
        2000 images at 224 px, 1000 negatives. Needs ``weights`` (a VGG-16 fine-tuned on the category)."""
        return cls()

    @classmethod
    def tiny(cls) -> GraphConfig:
        """convnet (widths 16-64) on synthparts 64 px: graph on bn3 (16×16) and bn4 (8×8) pre-ReLU maps,
        K = 13 and 7 nodes per filter, 150 lamp images, 150 negatives (the paper: 2000 + 1000)."""
        return cls(arch="convnet", layers=("bn3", "bn4"), density=(0.05, 0.1), top_n=(15, 0), top_m=(600, 0),
                   num_images=150, num_negatives=150, image_size=64, stability_units=167, transfer_top_t=30)

    @classmethod
    def resnet20(cls) -> GraphConfig:
        """ResNet-20 on synthparts 32 px: layer1 (32×32) / layer2 (16×16) / layer3 (8×8) block outputs with the
        released ResNet densities [0.05, 0.1, 0.2] (K = 52, 26, 13)."""
        return cls(arch="resnet20", layers=("layer1", "layer2", "layer3"), density=(0.05, 0.1, 0.2),
                   top_n=(15, 15, 0), top_m=(600, 600, 0), num_images=300, num_negatives=300, image_size=32,
                   transfer_top_t=30)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def sigma_bounds(self, i: int, h: int) -> tuple[float, float]:
        """(σ_min, σ_max) in cells of graph layer ``i`` with map side ``h`` (``max_delta·H``, ``/10``)."""
        smax = self.sigma_max_factor / math.sqrt(self.density[i] * h * h) * h
        return smax / 10.0, smax

    def validate(self) -> None:
        n = len(self.layers)
        if n < 1:
            raise ConfigError("graph: layers must name at least one layer (bottom to top), e.g. layers=bn3,bn4")
        for name in ("density", "top_n", "top_m"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"graph: {name} needs one value per layer ({n} layers: {self.layers}), got "
                                  f"{getattr(self, name)}")
        for name in ("strides", "centers"):
            if getattr(self, name) and len(getattr(self, name)) != n:
                raise ConfigError(f"graph: {name} must be empty (derived) or have {n} values, got "
                                  f"{getattr(self, name)}")
        if any(not 0 < d <= 1 for d in self.density):
            raise ConfigError(f"graph: density values must lie in (0, 1], got {self.density}")
        if any(m < 1 for m in self.top_n[:-1]) or any(m < 1 for m in self.top_m[:-1]):
            raise ConfigError("graph: top_n and top_m must be >= 1 for every layer below the top")
        if self.iterations < 1 or self.candidates < 1:
            raise ConfigError("graph: iterations and candidates must be >= 1")
        if self.num_images < 2 or self.num_negatives < 2:
            raise ConfigError("graph: num_images and num_negatives must be >= 2")
        positive = ("eta", "max_range", "deform_ratio", "init_delta", "map_delta", "sigma_max_factor")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"graph: {name} must be > 0, got {getattr(self, name)}")
        if self.tau < 0 or not 0 <= self.min_var_rate < 1 or not 0 <= self.edge_cut_rate < 0.5:
            raise ConfigError("graph: tau >= 0, 0 <= min_var_rate < 1 and 0 <= edge_cut_rate < 0.5 are required")
        if self.shots < 1 or self.transfer_top_t < 1 or self.stability_top_n < 1 or self.stability_units < 1:
            raise ConfigError("graph: shots, transfer_top_t, stability_top_n and stability_units must be >= 1")
        if self.memory_mb < 1:
            raise ConfigError("graph: memory_mb must be >= 1")
