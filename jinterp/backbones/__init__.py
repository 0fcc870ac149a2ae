"""Backbones: Linen CNNs with PyTorch semantics that return their named intermediates.

Every backbone is a pure Linen module::

    model = backbones.create("resnet20")
    variables = backbones.init(model, jax.random.key(0))           # or torch_import.from_torch(...)
    logits, feats = model.apply(variables, x)                      # x: (N, H, W, C) float32, normalized
    logits, feats = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})

``feats`` maps layer names to NHWC arrays ((N, D) for flat layers); ``layer_names(arch)`` lists them in
forward order (a dict returned through ``jit`` has its keys sorted).

Layer names
-----------
A name is the dotted path, in the PyTorch reference implementation, of the module whose *output* it is:

* ``vgg16``, ``vgg16_bn``, ``alexnet`` (torchvision): ``features.<i>`` for every conv, BN, ReLU and max-pool
  of the ``features`` Sequential (a conv's entry is its pre-ReLU output: we never run in-place ReLUs),
  ``avgpool`` (the adaptive pool, (N, 7, 7, 512) / (N, 6, 6, 256)), ``classifier.<i>`` (Linear, ReLU,
  Dropout; ``classifier.6`` = logits).
* ``resnet18``, ``resnet50`` (torchvision): ``conv1``, ``bn1``, ``relu``, ``maxpool``, blocks
  ``layer<s>.<b>`` then the stage ``layer<s>`` (s = 1..4), ``avgpool`` (N, 1, 1, C), ``fc``.
* ``resnet20/32/44/56`` (akamaster/pytorch_resnet_cifar10, option-A shortcuts): ``conv1``, ``bn1``, ``relu``,
  ``layer<s>.<b>`` then ``layer<s>`` (s = 1..3), ``avgpool`` (N, 1, 1, 64), ``linear``.
* ``vgg11_bn_cladec`` (ClaDec's ``Classifier``): the blocks ``conv0, conv1, conv2a, conv2, conv3a, conv3,
  conv4a, conv4`` (each conv+BN+ReLU), ``flat`` (N, 512, before dropout), ``pred`` (logits).
* ``convnet`` (ours): ``conv<i>``, ``bn<i>``, ``relu<i>`` (i = 1..4), ``pool<i>`` (i = 1..3), ``avgpool``,
  ``fc``.

Flax parameter paths mirror the PyTorch state_dict keys with ``.<digit>`` written ``_<digit>``
(``layer1.0.conv1.weight`` → ``params/layer1_0/conv1/kernel``); ``torch_import`` converts between them.

Input normalization: ``NORMALIZATION[arch]`` names a preset of ``jinterp.data.NORMALIZATIONS`` and
``normalize(images, arch)`` applies it: ``"imagenet"`` (RGB in [0, 1], mean (0.485, 0.456, 0.406), std
(0.229, 0.224, 0.225)) for the torchvision models; ``"cifar"`` (the same statistics, as akamaster trained) for
the CIFAR ResNets; ``"unit"`` (RGB or gray in [0, 1], no mean/std) for ``vgg11_bn_cladec`` (ClaDec's code) and
``convnet``.
"""

from jinterp.backbones.registry import (
    ARCHS,
    NORMALIZATION,
    arch_kwargs_from,
    check_layers,
    create,
    default_input_shape,
    init,
    layer_names,
    normalize,
    spec,
    variable_shapes,
)

__all__ = [
    "ARCHS", "NORMALIZATION", "arch_kwargs_from", "check_layers", "create", "default_input_shape", "init",
    "layer_names", "normalize", "spec", "variable_shapes",
]
