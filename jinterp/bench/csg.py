"""CSG train steps, JAX vs PyTorch, CIFAR ResNet-20 (spec B.10 second configuration).

    python -m jinterp.bench.csg [--quick]

Cases (same converted weights, same uint8 batch, train-mode BatchNorm, no augmentation, float32):

* ``csg.std_step``: standard path, CE, Adam (1e-5) on layer2+layer3+linear.
* ``csg.gated_step``: gated path, CE + 1e-3 * hinge, Adam (1e-3) on layer3+linear+G, then the gate projection.
  Timed against PyTorch twice: the released construction (per-sample Python loop, layer2 gradients computed:
  ``official``) and a vectorized PyTorch (broadcast gate, layer2 frozen during the step: ``vectorized``).

Agreement (``check``): from identical states, loss and the gradients of G and the linear layer, JAX vs PyTorch
(the post-Adam parameters are not compared: Adam's first step is ~lr * sign(g), so round-off in a near-zero
gradient flips a whole lr).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from jinterp import backbones, data
from jinterp.backbones import torch_import
from jinterp.bench import harness
from jinterp.bench.harness import Case, load_by_path, main_for
from jinterp.methods.csg import CSGConfig, PathOptim
from jinterp.methods.csg import gate as gates
from jinterp.methods.csg.train import Trainer

REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "backbones" / "torch_reference.py"


def _reference():
    return load_by_path(REFERENCE, "jinterp_bench_torch_reference")


def _setup(batch: int, seed: int = 0):
    import torch

    from jinterp.bench.torch_csg import TorchCSG

    tref = _reference()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tm = tref.build("resnet20", 10)
    calib = torch.from_numpy(rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    tref.randomize(tm, seed, calib)
    gate0 = rng.uniform(0.0, 1.0, (64, 10)).astype(np.float32)
    gate0 /= gate0.max(1, keepdims=True)
    variables = torch_import.from_torch("resnet20", {k: v.detach().clone() for k, v in tm.state_dict().items()},
                                        image_shape=(32, 32, 3))
    cfg = dataclasses.replace(CSGConfig.paper(), arch="resnet20", augment="none", batch_size=batch,
                              std_optim=PathOptim(lr=1e-5, train_stages=2),
                              csg_optim=PathOptim(lr=1e-3, train_stages=1))
    model = backbones.create("resnet20", 10)
    site = gates.gate_site(model)
    mean, std = data.NORMALIZATIONS["cifar"]
    trainer = Trainer(model, site, cfg, 10, mean, std)
    state = trainer.init_state(variables, 64)
    state["params"]["gate"] = jnp.asarray(gate0)
    images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, batch).astype(np.int32)
    dev = harness.torch_device()
    x_t = torch.from_numpy(((images / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32)
                           .transpose(0, 3, 1, 2).copy()).to(dev)
    y_t = torch.from_numpy(labels.astype(np.int64)).to(dev)
    tc = TorchCSG(tm.to(dev), 10, gate=torch.from_numpy(gate0).to(dev))
    return trainer, state, jnp.asarray(images), jnp.asarray(labels), tc, x_t, y_t


def _jax_grads(trainer, state, images, labels, path):
    flat = tu.flatten_dict(state["params"], sep="/")
    train_p = {k: flat[k] for k in trainer.keys[path]}
    frozen = {k: v for k, v in flat.items() if k not in train_p}
    loss_fn = trainer.loss_fn(path)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_p, frozen, state["model_state"], images,
                                                                 labels, jax.random.key(0))
    return float(loss), grads


def step_case(path: str, batch: int, official: bool | None = None) -> Case:
    trainer, state, images, labels, tc, x_t, y_t = _setup(batch)
    import torch

    def check() -> float:
        loss_j, g = _jax_grads(trainer, state, images, labels, path)
        tc.model.zero_grad()
        tc.gate.grad = None
        if path == "csg":
            loss_t = tc.csg_loss(x_t, y_t, bool(official))
        else:
            loss_t = torch.nn.functional.cross_entropy(tc.head(tc.features(x_t)), y_t)
        loss_t.backward()
        g_linear = tc.model.linear.weight.grad.cpu().numpy().T
        diffs = [abs(loss_j - float(loss_t.detach())),
                 float(np.abs(np.asarray(g["backbone/linear/kernel"]) - g_linear).max())]
        if path == "csg":
            diffs.append(float(np.abs(np.asarray(g["gate"]) - tc.gate.grad.cpu().numpy()).max()))
        tc.model.zero_grad()
        tc.gate.grad = None
        return max(diffs)

    step = jax.jit(trainer.step_fn(path), donate_argnums=(0,))
    holder = {"s": jax.tree.map(lambda x: jnp.array(x, copy=True), state)}
    lr = jnp.float32(trainer.cfg.std_optim.lr if path == "std" else trainer.cfg.csg_optim.lr)
    key = jax.random.key(0)

    def jax_fn():
        holder["s"], m = step(holder["s"], images, labels, lr, key)
        return m["loss"]

    def jax_lowered():
        return step.lower(holder["s"], images, labels, lr, key)

    if path == "csg":
        torch_fn = (lambda: tc.csg_step(x_t, y_t, bool(official)))
        variant = "official" if official else "vectorized"
        note = ("torch: released per-sample gate loop, layer2 grads computed" if official else
                "torch: broadcast gate, layer2 frozen during the step")
    else:
        torch_fn = (lambda: tc.std_step(x_t, y_t))
        variant, note = "-", "Adam 1e-5 on layer2+layer3+linear"
    return Case(pipeline=f"csg.{'gated' if path == 'csg' else 'std'}_step",
                params={"arch": "resnet20", "batch": batch, "torch": variant}, jax_fn=jax_fn, torch_fn=torch_fn,
                check=check, atol=1e-4, jax_lowered=jax_lowered, note=note, items=batch)


def cases(quick: bool) -> list[Case]:
    batch = 16 if quick else 128
    return [step_case("std", batch), step_case("csg", batch, official=True), step_case("csg", batch, official=False)]


def main(argv=None):
    return main_for(cases, argv, "csg")


if __name__ == "__main__":
    main()
