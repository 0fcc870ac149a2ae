"""ClaDec's configuration: one frozen dataclass, the official setting (``paper``) and a CPU-minutes twin (``tiny``).

Every constant of spec ``cladec_and_csg.md`` part A is a field. Layers are given by *name* (``flat``, ``conv4a``,
``relu3`` …, see ``jinterp.backbones.layer_names``), never by the official code's negative ``layInd``: at the
official HEAD ``layInd=-1`` slices ``children()[:-1]`` (the flattened 512-d code ``flat``, not the logits its
README captions claim) and ``layInd<=-2`` slices ``[:layInd-2]`` (``-2`` is ``conv4a``, not ``conv4``), while the
first commit hooked ``allExplainLays[layInd]`` (``-1`` = logits ``pred``, ``-2`` = ``conv4``). Both meanings are
in :data:`OFFICIAL_LAYINDEX` for reproducing either.
"""

from __future__ import annotations

import dataclasses

from jinterp.core.config import OptimConfig, TrainBackboneConfig, check_field_types
from jinterp.errors import ConfigError

# The official code's ``layInd`` -> jinterp's layer names of ``vgg11_bn_cladec`` (spec A.3.2).
OFFICIAL_LAYINDEX: dict[str, dict[int, str]] = {
    # HEAD c6f1131: nn.Sequential(children()[:ind]) with ind = layInd if layInd == -1 else layInd - 2.
    "head": {-1: "flat", -2: "conv4a", -3: "conv3", -4: "conv3a", -5: "conv2", -6: "conv2a", -7: "conv1",
             -8: "conv0"},
    # First commit aa2cb7c: forward hook on allExplainLays[layInd] = [conv0 .. conv4, pred][layInd].
    "first": {-1: "pred", -2: "conv4", -3: "conv4a", -4: "conv3", -5: "conv3a", -6: "conv2", -7: "conv2a",
              -8: "conv1", -9: "conv0"},
}


def official_decay_period(epochs: int) -> int:
    """``models.py::decay``: the lr is multiplied by 0.1 after every epoch ``e`` with
    ``(e + 1) % (E // 3 + E // 10 + 2) == 0`` (E = 64: after epochs 28 and 57, 0-indexed)."""
    return epochs // 3 + epochs // 10 + 2


def official_decay_epochs(epochs: int) -> tuple[int, ...]:
    """Epoch counts after which the lr drops x0.1 (E = 64 -> (29, 58)); boundaries of a piecewise schedule."""
    p = official_decay_period(epochs)
    return tuple(k * p for k in range(1, epochs // p + 1) if k * p < epochs)


def official_classifier(epochs: int) -> TrainBackboneConfig:
    """``models.py::getclassifier``: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, no augmentation,
    the step decay above, [0, 1] inputs without mean/std."""
    bounds = tuple(e / epochs for e in official_decay_epochs(epochs))  # fractions of the run
    return TrainBackboneConfig(
        arch="vgg11_bn_cladec", batch_size=128, epochs=float(epochs), augment="none", normalization="arch",
        optim=OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step",
                          decay_steps=bounds, decay_factor=0.1),
        log_every=100, eval_every=0, ckpt_every=1000, keep=2)


@dataclasses.dataclass(frozen=True)
class ClaDecConfig:
    """ClaDec + RefAE + evaluation (spec A.2-A.5).

    Backbone: ``arch`` with ``weights`` (a saved variables .npz, e.g. ``train-backbone``'s ``params.npz``); with
    ``weights=""`` the program first trains it with ``backbone`` (its ``arch``/``data`` are taken from here)
    into ``<workdir>/backbone``. ``data`` is a ``jinterp.data.load`` spec; ``image_size`` > 0 resizes every
    image to that size with PyTorch's legacy ``nearest`` rule (source index ``floor(i·in/out)``, as
    ``F.interpolate(size=32)`` upsamples Fashion-MNIST 28 -> 32 in the official code); for synthparts it is
    passed to the generator instead. ``train_size``/``test_size`` > 0 keep the first that many examples.

    Decoders (one per layer in ``layers``, per ``alphas`` entry, trained together by ``vmap``): ``base_width``
    is the official ``channel_mult`` (64). Loss ``(1-α)·MSE(x̂, x) + α·CE(C(x̂), y)`` with the frozen classifier
    C in eval mode; α = 0 trains on cached activations and never runs C. RefAE (``refae``): a fresh encoder of
    the classifier's architecture up to the layer plus the same decoder, MSE only. Both: Adam(``lr``) with
    PyTorch-coupled ``weight_decay`` on every parameter, ``epochs`` epochs of ``batch_size``, lr x0.1 at
    :func:`official_decay_epochs` when ``lr_decay``.

    Evaluation: reconstruction error and the frozen classifier's accuracy on reconstructions of the test split;
    with ``retrain_epochs`` > 0 the A.5 protocol (reconstructed by us from the third-party Keras code, the paper's
    own is unverified): a fresh classifier of the same architecture per reconstruction source, trained on the
    reconstructed training split (SGD ``retrain_lr``, momentum 0.9, wd 1e-4, the same step decay), tested on the
    reconstructed test split *and* on the original test images; a classifier trained on the original images
    with the same budget is the reference row. ``grid_rows`` test images per figure.

    ``faithful``: reproduce the official code's quirks — the CE term is computed even at α = 0 (no cached
    path: the frozen classifier runs on x̂ every step, weighted by 0), and RefAE's ``flat`` code goes through the
    classifier's active Dropout(0.5) while it trains (the official ``[:-1]`` slice keeps the dropout). Fixed
    (default): α = 0 skips the classifier; no dropout on the RefAE code.
    """

    arch: str = "vgg11_bn_cladec"
    weights: str = ""
    model: str = ""  # a user model (FILE.py:FACTORY or a saved .npz) in place of arch
    data: str = "synthparts"
    image_size: int = 32
    train_size: int = 0
    test_size: int = 0
    layers: tuple[str, ...] = ("flat", "conv4a")
    alphas: tuple[float, ...] = (0.0, 0.001, 0.01, 0.1)
    base_width: int = 64
    batch_size: int = 128
    epochs: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-5
    lr_decay: bool = True
    refae: bool = True
    backbone: TrainBackboneConfig = dataclasses.field(default_factory=lambda: official_classifier(64))
    retrain_epochs: int = 10
    retrain_lr: float = 0.1
    retrain_weight_decay: float = 1e-4
    retrain_batch_size: int = 128
    grid_rows: int = 8
    eval_batch_size: int = 512
    log_every: int = 50
    ckpt_every: int = 1000
    faithful: bool = False
    seed: int = 0
    # Adebayo et al.'s model-randomization check: the classifier re-initialized (same architecture) before the
    # decoders are trained on its activations; a result that survives it is not about what the classifier learned
    randomize_backbone: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)

    @classmethod
    def paper(cls) -> ClaDecConfig:
        """The official setting (``runMe.trainOne``): VGG-11-BN-like classifier, 32 px inputs, batch 128, 64
        epochs for classifier, RefAE and ClaDec, Adam 3e-4 / wd 1e-5 for the decoders, layers ``flat``
        (HEAD's layInd -1) and ``conv4a`` (layInd -2), α swept around the official 0.001."""
        return cls()

    @classmethod
    def tiny(cls) -> ClaDecConfig:
        """The small ConvNet on 32 px synthparts: backbone, two layers x (RefAE + a 3-α sweep) and the retrain
        protocol in about a minute on a 2-core CPU."""
        backbone = TrainBackboneConfig(
            arch="convnet", widths=(16, 32, 64, 64), batch_size=64, steps=120, augment="flip",
            optim=OptimConfig(name="adam", lr=3e-3, weight_decay=0.0, warmup_steps=20),
            log_every=40, eval_every=0, ckpt_every=0, keep=1)
        return cls(
            arch="convnet", data="synthparts", image_size=32, train_size=1536, test_size=384,
            layers=("relu3",), alphas=(0.0, 0.01, 0.1), base_width=16, batch_size=64, epochs=3,
            lr=3e-3, weight_decay=0.0, backbone=backbone, retrain_epochs=2, retrain_lr=0.05,
            retrain_batch_size=64, grid_rows=6, log_every=16, ckpt_every=0)

    def validate(self) -> None:
        self.backbone.validate()
        if not self.layers:
            raise ConfigError("layers is empty; name at least one layer (see jinterp.backbones.layer_names(arch))")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layers has duplicates: {list(self.layers)}")
        if not self.alphas:
            raise ConfigError("alphas is empty; give at least one α in [0, 1], e.g. alphas=0,0.001")
        for a in self.alphas:
            if not 0.0 <= a <= 1.0:
                raise ConfigError(f"α must be in [0, 1] (the loss is (1-α)·MSE + α·CE), got {a}; "
                                  "e.g. --set alphas=0,0.001,0.01")
        if len(set(self.alphas)) != len(self.alphas):
            raise ConfigError(f"alphas has duplicates: {list(self.alphas)}")
        positive = {"batch_size": self.batch_size, "epochs": self.epochs, "base_width": self.base_width,
                    "eval_batch_size": self.eval_batch_size, "retrain_batch_size": self.retrain_batch_size,
                    "log_every": self.log_every}
        for k, v in positive.items():
            if v <= 0:
                raise ConfigError(f"{k} must be > 0, got {v}")
        nonneg = {"image_size": self.image_size, "train_size": self.train_size, "test_size": self.test_size,
                  "retrain_epochs": self.retrain_epochs, "grid_rows": self.grid_rows, "ckpt_every": self.ckpt_every}
        for k, v in nonneg.items():
            if v < 0:
                raise ConfigError(f"{k} must be >= 0, got {v}")
        if self.lr <= 0 or self.retrain_lr <= 0:
            raise ConfigError(f"lr and retrain_lr must be > 0, got {self.lr}, {self.retrain_lr}")
        if self.weight_decay < 0 or self.retrain_weight_decay < 0:
            raise ConfigError("weight_decay and retrain_weight_decay must be >= 0")

