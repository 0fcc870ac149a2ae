"""Configuration of class-specific-gate training and its evaluation (spec part B).

``CSGConfig.paper()`` is the released VOC-Part recipe of hyliang96/CSGCNN (``VOCPart/train/run.py``; spec B.3):
151 epochs (``while epoch <= 150``), batch 32, seed 12, gated epochs iff ``epoch >= 10 and epoch % 3 >= 2``,
a standard-path Adam (lr 1e-5, layer3+layer4+fc) and a separate gated-path Adam (lr 1e-3, layer4+fc+G), each
with MultiStepLR (60, 90, 120; x0.1) stepped only after its own epochs, lambda 1e-3, hinge at density 0.2, G
initialized to 0.5, renormalized after every gated step. ResNet-152 and VOC Part are not part of jinterp, so
``paper()`` runs ResNet-50 on synthparts at 128 px (override ``arch``/``data``/``weights`` for another
backbone; the CIFAR-10 ResNet-20 reproduction in ``experiments/`` does). ``tiny()`` trains a small ConvNet
from scratch on 32-px synthparts in about a minute on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import typing

from jinterp.core.config import check_field_types
from jinterp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PathOptim:
    """One of the two optimizers (standard path, gated path), each with its own state and schedule.

    ``name``: ``adam`` (PyTorch Adam; ``weight_decay`` is coupled L2) or ``sgd`` (momentum, optional Nesterov).
    ``milestones``: epochs *of this path* after which the lr is multiplied by ``gamma`` (the released
    MultiStepLR is stepped only at the end of epochs that used its path, so the gated lr of ``paper()`` never
    decays). ``train_stages``: how many of the backbone's top stages this optimizer updates (plus the head, and
    for the gated path the gate); -1 = every parameter. The released code frees the top 5 / top 4 children
    (layer3, layer4, fc [, lmask]) = 2 / 1 stages.
    """

    name: typing.Literal["adam", "sgd"] = "adam"
    lr: float = 1e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = (60, 90, 120)
    gamma: float = 0.1
    train_stages: int = 2

    def __post_init__(self) -> None:
        check_field_types(self)

    def validate(self, what: str) -> None:
        if self.lr <= 0:
            raise ConfigError(f"{what}.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.gamma <= 0:
            raise ConfigError(f"{what}.weight_decay must be >= 0 and {what}.gamma > 0")
        if self.train_stages < -1 or self.train_stages == 0:
            raise ConfigError(f"{what}.train_stages must be -1 (all) or >= 1, got {self.train_stages}")


@dataclasses.dataclass(frozen=True)
class CSGConfig:
    """Class-specific gate training (+ standard baseline) and the evaluation suite.

    Backbone: ``arch`` (``widths`` for convnet), ``weights`` (a saved variables .npz); with ``weights=""``,
    ``pretrain=True`` first trains the backbone with ``TrainBackboneConfig`` (``pretrain_preset``) into
    ``<workdir>/backbone``, ``pretrain=False`` starts both models from the same random init.
    Data: ``data`` (a ``jinterp.data.load`` spec; for synthparts ``image_size``, ``train_size``, ``test_size``),
    ``augment``/``crop_pad`` (train: random crop after zero padding + horizontal flip), ``normalization``
    (``arch`` = the backbone's scheme). The last partial batch of an epoch is dropped (fixed shapes).
    Schedule: an epoch runs the gated path iff ``epoch >= warmup_epochs and epoch % mask_period >=
    mask_epoch_min``. Loss of the gated path: ``CE + lambda_reg * max(0, ||G||_1 - density_ratio * K * C)``.
    ``faithful``: reproduce the public code's quirks: (a) gate renormalization divides by the raw per-filter
    max (NaN/inf when it reaches <= 0), (b) the standard *baseline* frees one stage more than the CSG model's
    standard path (its children list lacks ``lmask``; spec B.3 "asymmetry").
    Evaluation (on ``eval_size`` test images, 0 = all): MIS with ``mi_neighbors`` and scikit-learn's jitter
    for ``mi_random_state``; GradMap (top ``n_top_channel`` filters per class, blur ``grad_blur_sigma`` /
    ``grad_blur_kernel``, binarize > ``grad_threshold``, success IoU >= ``grad_iou_success``); CAM (top
    ``cam_top_fraction`` of pixels, success IoU > ``cam_iou_success``); ActivMap (per-filter thresholds at the
    top ``activ_top_fraction``, success IoU > ``activ_iou_success``). Adversarial detection (a reconstructed
    protocol, not the paper's): FGSM and PGD (``adv_eps``, ``pgd_steps``, ``pgd_alpha``, ``pgd_random_start``)
    on ``adv_size`` correctly classified test images, in [0, 1] pixel space.
    """

    arch: str = "resnet50"
    widths: tuple[int, ...] = ()
    weights: str = ""
    model: str = ""  # a user model (FILE.py:FACTORY or a saved .npz) in place of arch
    gate_layer: str = ""  # with model: the module whose output is gated (its last conv stage, after the ReLU)
    head: str = ""  # with model: the classifier module after gate_layer
    pretrain: bool = True
    pretrain_preset: typing.Literal["paper", "tiny"] = "paper"
    data: str = "synthparts"
    image_size: int = 128
    train_size: int = 0
    test_size: int = 0
    seed: int = 12
    seeds: int = 3             # independent runs (seed, seed+1, …) reported as mean ± std (issue #20); 1 = one run
    faithful: bool = False
    baseline: bool = True
    # Adebayo et al.'s model-randomization check: both trained models evaluated with their backbone weights
    # re-initialized (same architecture; the learned gate kept), see ``program.randomize_trained``
    randomize_backbone: bool = False

    epochs: int = 151
    warmup_epochs: int = 10
    mask_period: int = 3
    mask_epoch_min: int = 2
    batch_size: int = 32
    gate_init: float = 0.5
    lambda_reg: float = 1e-3
    density_ratio: float = 0.2
    gate_lr_mult: float = 1.0
    std_optim: PathOptim = dataclasses.field(default_factory=lambda: PathOptim(lr=1e-5, train_stages=2))
    csg_optim: PathOptim = dataclasses.field(default_factory=lambda: PathOptim(lr=1e-3, train_stages=1))
    augment: typing.Literal["none", "flip", "flip_crop"] = "flip_crop"
    crop_pad: int = 16
    normalization: str = "arch"
    eval_batch_size: int = 128

    eval_size: int = 0
    mi_neighbors: int = 3
    mi_random_state: int = 0
    n_top_channel: int = 30
    grad_blur_sigma: float = 30.0
    grad_blur_kernel: int = 61
    grad_threshold: float = 1.0
    grad_iou_success: float = 0.2
    cam_top_fraction: float = 0.3
    cam_iou_success: float = 0.3
    activ_top_fraction: float = 0.3
    activ_iou_success: float = 0.3

    adv_size: int = 256
    adv_eps: float = 8.0 / 255.0
    pgd_steps: int = 10
    pgd_alpha: float = 2.0 / 255.0
    pgd_random_start: bool = True

    def __post_init__(self) -> None:
        check_field_types(self)

    @classmethod
    def paper(cls) -> CSGConfig:
        """The released VOC-Part training constants (ResNet-50 / synthparts 128 px stand in for ResNet-152 /
        VOC Part)."""
        return cls()

    @classmethod
    def tiny(cls) -> CSGConfig:
        """A ConvNet (16-32-64-64) trained from scratch on 32-px synthparts: 13 epochs of 1200 images, gated
        epochs 5, 8, 11, both paths Adam 2e-3 on every parameter; about a minute for CSG + baseline + the
        evaluation suite on a 2-core CPU."""
        return cls(arch="convnet", widths=(16, 32, 64, 64), pretrain=False, image_size=32, train_size=1200,
                   test_size=400, seed=0, epochs=13, warmup_epochs=3, mask_period=3, mask_epoch_min=2,
                   batch_size=50, gate_lr_mult=25.0,
                   std_optim=PathOptim(lr=2e-3, milestones=(8,), train_stages=-1),
                   csg_optim=PathOptim(lr=2e-3, milestones=(), train_stages=-1),
                   augment="flip", crop_pad=0, eval_size=400, n_top_channel=10, grad_blur_sigma=7.5,
                   grad_blur_kernel=15, adv_size=128, pgd_steps=5)

    def is_csg_epoch(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) runs the gated path (released: ``epoch >= 10 and epoch % 3 >= 2``)."""
        return epoch >= self.warmup_epochs and epoch % self.mask_period >= self.mask_epoch_min

    def validate(self) -> None:
        self.std_optim.validate("std_optim")
        self.csg_optim.validate("csg_optim")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1 (runs with seed, seed+1, …), got {self.seeds}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size and eval_batch_size must be >= 1")
        if self.mask_period < 1 or not 0 <= self.mask_epoch_min:
            raise ConfigError(f"mask_period must be >= 1 and mask_epoch_min >= 0, got {self.mask_period}, "
                              f"{self.mask_epoch_min}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0.0 <= self.gate_init <= 1.0:
            raise ConfigError(f"gate_init must lie in [0, 1], got {self.gate_init}")
        if self.lambda_reg < 0 or self.density_ratio < 0 or self.gate_lr_mult <= 0:
            raise ConfigError("lambda_reg and density_ratio must be >= 0, gate_lr_mult > 0")
        for name in ("cam_top_fraction", "activ_top_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if self.grad_blur_kernel < 1 or self.grad_blur_kernel % 2 == 0:
            raise ConfigError(f"grad_blur_kernel must be odd and >= 1, got {self.grad_blur_kernel}")
        if self.mi_neighbors < 1 or self.n_top_channel < 1:
            raise ConfigError("mi_neighbors and n_top_channel must be >= 1")
        if self.adv_eps < 0 or self.pgd_steps < 0 or self.pgd_alpha < 0:
            raise ConfigError("adv_eps, pgd_steps and pgd_alpha must be >= 0")
        for name in ("train_size", "test_size", "eval_size", "adv_size", "crop_pad"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
