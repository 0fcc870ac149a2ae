"""One API from any source to a backbone: load -> BatchIterator -> normalize -> ConvNet loss and gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_data_readers import write_broden  # the tiny Broden-format fixture (sibling test module)

from jinterp import backbones
from jinterp.data import BatchIterator, load, normalize


def _one_grad_step(ds):
    it = BatchIterator(ds.take(np.arange(min(8, len(ds)))), 8, seed=0, num_epochs=1)
    batch = next(it)
    it.close()
    model = backbones.create("convnet", num_classes=ds.num_classes)
    variables = backbones.init(model, jax.random.key(0), ds.image_shape)

    def loss_fn(params):
        x = normalize(batch["image"], "unit")
        (logits, _), _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.key(1)})
        per = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return jnp.sum(per * batch["mask"]) / jnp.sum(batch["mask"])

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
    assert np.isfinite(float(loss))
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads)) > 0
    return batch


def test_synthparts():
    batch = _one_grad_step(load("synthparts:size=32,n_train=16,n_test=8"))
    assert batch["image"].shape == (8, 32, 32, 3)


def test_broden_fixture(tmp_path):
    write_broden(tmp_path, n=6, ih=32, sh=16)
    batch = _one_grad_step(load(f"broden:{tmp_path}"))
    assert batch["image"].shape == (8, 32, 32, 3) and int(batch["mask"].sum()) == 4  # 4 train images, padded


@pytest.mark.parametrize("spec, shape", [("npz:{}/data/cifar10_subset.npz", (32, 32, 3)),
                                         ("mnist:{}/data/mnist_test.npz", (28, 28, 1))])
def test_shared_real_data(shared_dir, spec, shape):
    batch = _one_grad_step(load(spec.format(shared_dir)))
    assert batch["image"].shape == (8, *shape)
