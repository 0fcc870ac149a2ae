"""Configuration of the explainer network and its ICNN filter loss (spec ``explainer_and_graph.md`` B, C).

No public code exists for the explainer; the spec marks its architecture [R] (recalled), its loss weights and
optimizer [U] (unknown, default proposed) and jinterp's concrete layer sizes [I]. Every such detail is a
field here, set to the spec's stated default; the field comments name the tag.
"""

from __future__ import annotations

import dataclasses
import typing

from jinterp.core.config import OptimConfig, check_field_types
from jinterp.errors import ConfigError

# Default (input layer, target layer) per performer architecture [I]: a middle conv layer and a higher one.
DEFAULT_LAYERS: dict[str, tuple[str, str]] = {
    "convnet": ("relu3", "relu4"),
    "resnet20": ("layer2", "layer3"),
    "resnet32": ("layer2", "layer3"),
    "resnet44": ("layer2", "layer3"),
    "resnet56": ("layer2", "layer3"),
    "vgg16": ("relu4_3", "relu5_3"),
    "vgg16_bn": ("relu4_3", "relu5_3"),
}


@dataclasses.dataclass(frozen=True)
class ExplainerConfig:
    """Explainer network distilled from a frozen performer (``jinterp explainer``).

    Performer and data: ``arch``, ``weights`` (a saved variables .npz; "" trains ``arch`` first with
    ``TrainBackboneConfig.tiny()``/``paper()`` into ``<workdir>/backbone``, ``backbone_steps`` > 0 overriding
    its length), ``data`` (a ``jinterp.data.load`` spec; for synthparts ``image_size``/``train_size``/
    ``test_size`` pick the generated set), ``layer`` (input feature map f, post-ReLU) and ``target`` (the higher
    layer f⁺ to reconstruct); "" takes ``DEFAULT_LAYERS[arch]``.

    Architecture (spec C2, [R]/[I]): ``filters`` interpretable filters per interp layer and ordinary filters
    (0: the target's channel count; paper setting 512), ``decoder_width`` (0: ``filters``),
    ``norm_momentum`` (EMA of each track's per-image RMS, [I] 0.9), ``p_bias_init`` (+2: p ≈ 0.88 at init).

    ICNN layers (spec B): ``location`` (``centroid`` as the release, or ``argmax`` as the paper's text),
    ``template_beta`` (β of the loss templates, paper 4 [R]), ``prior_alpha`` (0: HW/(1+HW) [R]),
    ``loss_input`` (``unmasked``: the loss sees the post-ReLU map before the mask, whose template inner
    products the release's gradient uses; ``masked``: after), ``beta_*`` (learned mask β: init 2.0, step
    ``beta_rate`` toward ``clip(beta_scale/σ̄, *beta_clip)``, clamped to ``beta_bounds``; ``learn_beta=False``
    keeps β fixed), ``icnn_surrogate`` (the release's surrogate gradient with coefficient
    ``surrogate_coef / epoch`` instead of the exact MI gradient; 1e−6 = 1e−5 · mag 0.1 in the release).
    ``filter_norm`` (``filter``: the exact loss sees each filter's map divided by its batch mean times
    ``filter_gain``, so it cannot be satisfied by inflating activations [I, issue #20]; the divisor is at least
    ``filter_floor`` × the input features' mean, so it cannot be satisfied by fading them out either; ``none``: raw
    maps, the paper's formula); ``filter_diversity`` > 0 penalizes the filters' mutual overlap (an option, [I]:
    the per-filter ICNN loss lets every filter find the same part), measured by ``diversity_term``: ``maps``
    (per-image cosine of the filters' maps, the most effective in experiments/README.md), ``templates`` (how often
    two filters pick the same part template), ``mean_maps`` (cosine of their batch-mean maps) or ``weights``
    (squared cosine of their conv kernels: decorrelation). None reaches the
    issue's ≤ 20 % share on one cell while beating the centre baseline (experiments/README.md).
    ``faithful=True`` reproduces the release's
    ICNN behaviour: surrogate gradient (even when ``icnn_surrogate`` is False) divided by the batch size (the
    release sums the loss over the batch and SGD divides by it), β moved by SGD with momentum 0.9 and 1/batch
    (``beta_rule="released"``), raw maps. :meth:`loss_kwargs` / :meth:`update_kwargs` give the arguments of
    ``model.make_loss`` / ``make_update``. No labels are used, so every image is a "positive" of the filter loss
    (spec C3 leaves negatives open; jinterp decides: none).

    Loss (spec C3): ``L = E‖f⁺ − f̂⁺‖²/‖f⁺‖² + lam·Σ_filters Loss_filter − eta·E log p``; ``lam`` and ``eta``
    are [U] (spec scan λ ∈ {1e−4, 1e−3, 1e−2}, η ∈ {0.1, 1}).

    Training: ``optim`` (spec C3 [U]: Adam 1e−4, batch 32, 50 epochs), ``steps`` > 0 overrides ``epochs``.

    Sanity check: ``randomize_backbone`` re-initializes the performer's weights (same architecture) before the
    explainer is trained: the model-randomization check of Adebayo et al. (NeurIPS 2018); results carry it.

    Evaluation: ``instability_top_n`` (ICNN-m variant of location instability: N = 100 images per filter),
    ``sweep_lams``/``sweep_etas`` (a grid trained together, vmapped over stacked params, ``sweep_steps``
    each; empty = no sweep), ``num_figure_filters`` part maps in the figure. (An interpretable-CNN performer
    trained with ICNN layers, for comparison, is not implemented yet.)
    """

    arch: str = "convnet"
    weights: str = ""
    model: str = ""  # a user model (FILE.py:FACTORY or a saved .npz) in place of arch
    data: str = "synthparts"
    image_size: int = 64
    train_size: int = 0
    test_size: int = 0
    backbone_steps: int = 0
    layer: str = ""
    target: str = ""
    seed: int = 0
    faithful: bool = False
    randomize_backbone: bool = False
    # architecture
    filters: int = 512
    decoder_width: int = 0
    norm_momentum: float = 0.9
    norm_eps: float = 1e-6
    p_bias_init: float = 2.0
    # ICNN layers
    location: typing.Literal["centroid", "argmax"] = "centroid"
    template_beta: float = 4.0
    prior_alpha: float = 0.0
    loss_input: typing.Literal["unmasked", "masked"] = "unmasked"
    learn_beta: bool = True
    beta_init: float = 2.0
    beta_rate: float = 0.05
    beta_scale: float = 3.0
    beta_clip: tuple[float, float] = (1.5, 3.0)
    beta_bounds: tuple[float, float] = (0.5, 10.0)
    icnn_surrogate: bool = False
    surrogate_coef: float = 1e-6
    filter_norm: typing.Literal["filter", "none"] = "filter"
    filter_gain: float = 16.0
    filter_floor: float = 0.5
    filter_diversity: float = 0.0
    diversity_term: typing.Literal["maps", "templates", "mean_maps", "weights"] = "maps"
    # loss
    lam: float = 1e-3
    eta: float = 0.1
    # training
    optim: OptimConfig = dataclasses.field(
        default_factory=lambda: OptimConfig(name="adam", lr=1e-4, weight_decay=0.0, schedule="constant"))
    batch_size: int = 32
    epochs: float = 50.0
    steps: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    keep: int = 2
    # evaluation
    eval_batch_size: int = 128
    instability_top_n: int = 100
    sweep_lams: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    sweep_etas: tuple[float, ...] = (0.1, 1.0)
    sweep_steps: int = 0
    num_figure_filters: int = 8

    def __post_init__(self) -> None:
        check_field_types(self)

    @classmethod
    def paper(cls) -> ExplainerConfig:
        """The spec's proposed setting (C2/C3: 512 filters, Adam 1e−4, batch 32, 50 epochs, λ 1e−3, η 0.1);
        the paper's own values are not retrievable ([U])."""
        return cls()

    @classmethod
    def tiny(cls) -> ExplainerConfig:
        """About a minute of compute on a 2-core CPU: the tiny synthparts convnet (relu3 16x16x64 -> relu4
        8x8x64), 32 filters, 300 steps at lr 1e−3, λ = 3 (the filter loss scales with activation magnitudes:
        at this performer's O(1) activations λ = 1e−3 leaves it inert, see experiments/README.md), a λ ∈ {0, 3}
        sweep of 100 steps."""
        return cls(
            train_size=2000, test_size=500, backbone_steps=250, filters=32, lam=3.0, eta=0.1,
            optim=OptimConfig(name="adam", lr=1e-3, weight_decay=0.0, schedule="constant"),
            steps=300, batch_size=32, log_every=50, ckpt_every=300, eval_batch_size=250,
            sweep_lams=(0.0, 3.0), sweep_etas=(0.1,), sweep_steps=100, num_figure_filters=6,
        )

    @property
    def surrogate(self) -> bool:
        """Whether the filter-loss gradient is the release's surrogate (``icnn_surrogate`` or ``faithful``)."""
        return bool(self.icnn_surrogate or self.faithful)

    def loss_kwargs(self) -> dict:
        """Keyword arguments of ``model.make_loss`` for this config (faithful: raw maps, 1/B surrogate)."""
        return dict(template_beta=self.template_beta, prior_alpha=self.prior_alpha or None,
                    loss_input=self.loss_input, surrogate=self.surrogate, surrogate_coef=self.surrogate_coef,
                    filter_norm="none" if self.faithful else self.filter_norm, filter_gain=self.filter_gain,
                    filter_floor=self.filter_floor, filter_diversity=0.0 if self.faithful else self.filter_diversity,
                    diversity_term=self.diversity_term,
                    surrogate_batch_mean=self.faithful)

    def update_kwargs(self) -> dict:
        """Keyword arguments of ``model.make_update`` (without ``steps_per_epoch``); faithful: the release's β SGD."""
        return dict(learn_beta=self.learn_beta, beta_rate=self.beta_rate, beta_scale=self.beta_scale,
                    beta_clip=self.beta_clip, beta_bounds=self.beta_bounds, location=self.location,
                    beta_rule="released" if self.faithful else "step")

    def layers(self) -> tuple[str, str]:
        """(input layer, target layer), with the arch defaults filled in."""
        default = DEFAULT_LAYERS.get(self.arch, ("", ""))
        layer, target = self.layer or default[0], self.target or default[1]
        if not layer or not target:
            raise ConfigError(f"no default explainer layers for arch {self.arch!r}; set layer=... and target=... "
                              f"(known defaults: {', '.join(DEFAULT_LAYERS)})")
        return layer, target

    def validate(self) -> None:
        self.optim.validate()
        for name in ("batch_size", "eval_batch_size", "instability_top_n"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("filters", "decoder_width", "steps", "sweep_steps", "backbone_steps", "train_size",
                     "test_size", "num_figure_filters", "log_every", "ckpt_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.steps == 0 and self.epochs <= 0:
            raise ConfigError("set steps > 0 or epochs > 0")
        if self.lam < 0 or self.eta < 0 or any(v < 0 for v in self.sweep_lams + self.sweep_etas):
            raise ConfigError("lam, eta and the sweep values must be >= 0")
        if not 0.0 <= self.norm_momentum < 1.0:
            raise ConfigError(f"norm_momentum must be in [0, 1), got {self.norm_momentum}")
        if not 0.0 <= self.prior_alpha < 1.0:
            raise ConfigError(f"prior_alpha must be in [0, 1) (0 = HW/(1+HW)), got {self.prior_alpha}")
        lo, hi = self.beta_bounds
        if not 0 < lo <= hi:
            raise ConfigError(f"beta_bounds must satisfy 0 < lo <= hi, got {self.beta_bounds}")
        if not 0 < self.beta_clip[0] <= self.beta_clip[1]:
            raise ConfigError(f"beta_clip must satisfy 0 < lo <= hi, got {self.beta_clip}")
        if self.filter_norm not in ("filter", "none"):
            raise ConfigError(f"filter_norm must be 'filter' or 'none', got {self.filter_norm!r}")
        if self.filter_floor < 0 or self.filter_diversity < 0:
            raise ConfigError(f"filter_floor and filter_diversity must be >= 0, got {self.filter_floor}, "
                              f"{self.filter_diversity}")
        if self.diversity_term not in ("maps", "templates", "mean_maps", "weights"):
            raise ConfigError(f"diversity_term must be maps, templates, mean_maps or weights, got "
                              f"{self.diversity_term!r}")
        if not self.filter_gain > 0:
            raise ConfigError(f"filter_gain must be > 0, got {self.filter_gain}")
        if not 0 <= self.beta_rate <= 1:
            raise ConfigError(f"beta_rate must be in [0, 1], got {self.beta_rate}")
