"""ClaDec's decoder family: shapes from named layers of several backbones, the official sizes, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp import backbones
from jinterp.errors import ConfigError, LayerError, ShapeError
from jinterp.methods.cladec import OFFICIAL_LAYINDEX, ClaDecConfig, official_decay_epochs
from jinterp.methods.cladec.decoder import init_decoder, make_decoder, num_params, plan_decoder
from jinterp.methods.cladec.program import check_layers


def _feature_shapes(arch, image_shape, **kw):
    model = backbones.create(arch, **kw)
    shapes = backbones.variable_shapes(model, image_shape)
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes, x)
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


@pytest.mark.parametrize("arch,image_shape,layers", [
    ("vgg11_bn_cladec", (32, 32, 1),
     ["conv0", "conv1", "conv2a", "conv3a", "conv3", "conv4a", "conv4", "flat", "pred"]),
    ("convnet", (32, 32, 3), ["conv1", "pool1", "relu3", "relu4", "avgpool", "fc"]),
    ("resnet20", (32, 32, 3), ["layer1", "layer2", "layer3", "avgpool"]),
    ("vgg16", (64, 64, 3), ["features.4", "features.16", "features.30", "avgpool"]),
])
def test_decoder_reaches_the_image_from_named_layers(arch, image_shape, layers):
    feats = _feature_shapes(arch, image_shape)
    for layer in layers:
        if arch == "vgg16" and layer == "avgpool":  # 7x7 adaptive pool cannot reach 64 px: a clear error
            with pytest.raises(ShapeError, match="cannot reach 64x64"):
                make_decoder(feats[layer], image_shape, 8, layer)
            continue
        dec = make_decoder(feats[layer], image_shape, 8, layer)
        a = jax.ShapeDtypeStruct((2, *feats[layer]), jnp.float32)
        out = jax.eval_shape(lambda a, dec=dec: dec.init_with_output(jax.random.key(0), a)[0], a)
        assert out.shape == (2, *image_shape), (arch, layer)
        # A flat activation (D,) or a 1x1 map starts with the dense entry; larger maps with the 3x3 conv.
        spatial = feats[layer][:-1] if len(feats[layer]) == 3 else (1, 1)
        assert dec.plan.entry == ("dense" if spatial == (1, 1) else "conv")


@pytest.mark.parametrize("act_shape", [(32, 32, 4)])
def test_decoder_output_is_an_image_in_unit_range(act_shape):
    # A full-resolution layer (no upsampling; our extension of the official formula). The official shapes
    # (dense and conv entries) are checked value for value against PyTorch in test_cladec_torch_parity.
    dec = make_decoder(act_shape, (32, 32, 3), 4)
    params = init_decoder(dec, jax.random.key(1))
    a = 3.0 * jax.random.normal(jax.random.key(2), (4, *act_shape))
    y = np.asarray(jax.jit(dec.apply)({"params": params}, a))
    assert y.shape == (4, 32, 32, 3)
    assert np.all((y >= 0) & (y <= 1)) and y.std() > 0


def test_official_decoders_have_the_spec_parameter_counts():
    # spec A.3.3: pre-logit 512 -> 7,211,457 params; conv4a 512x2x2 -> 5,113,793 (Fashion-MNIST, C_in = 1).
    for shape, want, widths in [((512,), 7_211_457, (512, 256, 128, 64, 1)),
                                ((2, 2, 512), 5_113_793, (256, 128, 64, 1))]:
        dec = make_decoder(shape, (32, 32, 1), 64)
        assert dec.plan.widths == widths
        x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
        params = jax.eval_shape(lambda x, d=dec: d.init(jax.random.key(0), x), x)["params"]
        assert num_params(params) == want


def test_first_commit_logits_decoder_matches_spec_table():
    plan = plan_decoder((10,), (32, 32, 1), 64)  # logits: Linear 10 -> 64, then CT 64 -> 512 -> ... -> C_in
    assert (plan.entry, plan.entry_width, plan.widths) == ("dense", 64, (512, 256, 128, 64, 1))


def test_unreachable_image_sizes_raise_shape_errors():
    with pytest.raises(ShapeError, match="cannot reach 224x224"):
        plan_decoder((6, 6, 256), (224, 224, 3))          # AlexNet's 6x6 at 224 px
    with pytest.raises(ShapeError, match="cannot reach"):
        plan_decoder((4, 4, 8), (32, 16, 3))               # different ratios per axis
    with pytest.raises(ShapeError, match="cannot reach"):
        plan_decoder((8, 8, 8), (4, 4, 3))                 # smaller than the map
    with pytest.raises(ShapeError):
        plan_decoder((2, 3), (32, 32, 3))                  # neither (D,) nor (H, W, C)


def test_config_rejects_bad_alpha_and_unknown_layers():
    from jinterp.core.config import apply_overrides

    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        apply_overrides(ClaDecConfig.tiny(), ["alphas=0,1.5"])
    with pytest.raises(ConfigError):
        apply_overrides(ClaDecConfig.tiny(), ["alphas=-0.1"])
    cfg = apply_overrides(ClaDecConfig.tiny(), ["layers=relu3,conv9"])
    with pytest.raises(LayerError, match="conv9.*Valid layers"):
        check_layers(cfg, 6, (32, 32, 3))
    # Unreachable decoder shape for a valid layer is caught before any training too.
    cfg = apply_overrides(ClaDecConfig.tiny(), ["layers=avgpool"])
    with pytest.raises(ShapeError, match="avgpool.*cannot reach 24x24"):
        check_layers(cfg, 6, (24, 24, 3))


def test_official_layer_index_mapping_and_decay():
    # HEAD: -1 is the 512-d pre-logit code, -2 conv4a; first commit: -1 logits, -2 conv4 (spec A.3.2).
    assert OFFICIAL_LAYINDEX["head"][-1] == "flat" and OFFICIAL_LAYINDEX["head"][-2] == "conv4a"
    assert OFFICIAL_LAYINDEX["first"][-1] == "pred" and OFFICIAL_LAYINDEX["first"][-2] == "conv4"
    names = backbones.layer_names("vgg11_bn_cladec")
    assert all(v in names for m in OFFICIAL_LAYINDEX.values() for v in m.values())
    # models.py::decay with 64 epochs: x0.1 after epochs 28 and 57 (0-indexed), i.e. from epochs 29 and 58.
    assert official_decay_epochs(64) == (29, 58)
    drops = [e for e in range(64) if (e + 1) % (64 // 3 + 64 // 10 + 2) == 0]
    assert tuple(d + 1 for d in drops) == official_decay_epochs(64)
