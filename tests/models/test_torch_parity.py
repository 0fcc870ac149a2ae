"""PyTorch CNNs of five families, converted with ``jinterp.models.from_torch``: every module's output, every
functional op's output and the logits match PyTorch in eval mode; a train-mode SGD step matches too."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp import models

TOL = 1e-4


def torch_reference(torch, model, x):
    """``(logits, {name: output})``: every module's output by its path (forward hooks, last call wins) and every
    functional node's output by its fx node name (an fx Interpreter over PyTorch's own trace)."""
    outs = {}
    traced = torch.fx.symbolic_trace(model)  # before the hooks: tracing would fire them with proxies
    hooks = [m.register_forward_hook(lambda _m, _i, o, name=name: outs.__setitem__(name, o.clone()))
             for name, m in model.named_modules() if name]

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n.op in ("call_function", "call_method") and isinstance(value, torch.Tensor):
                outs.setdefault(n.name, value.clone())  # clone: a later in-place op would change it
            return value

    with torch.no_grad():
        logits = Recorder(traced).run(x)
    for h in hooks:
        h.remove()
    return logits, outs


def _nhwc(t):
    a = t.detach().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


@pytest.mark.parametrize("family", ["vgg", "resnet", "densenet", "mobilenet", "upsample"])
def test_eval_parity_every_named_intermediate(torch, families, family):
    torch.manual_seed(0)
    net = families.randomize_bn(families.FAMILIES[family]()).eval()
    # MobileNet's input is scaled so that its ReLU6s really clip (checked below)
    x = torch.randn(2, 3, 16, 16) * (15.0 if family == "mobilenet" else 1.0)
    model, variables = models.from_torch(net, x)
    logits, feats = jax.jit(lambda v, im: model.apply(v, im, train=False))(variables,
                                                                          jnp.asarray(_nhwc(x)))
    ref_logits, ref = torch_reference(torch, net, x)
    np.testing.assert_allclose(np.asarray(logits), ref_logits.numpy(), atol=TOL, rtol=0)
    # Every module (containers included) and every functional op is there, under PyTorch's names.
    missing = sorted(set(ref) - set(feats))
    assert not missing, f"not in feats: {missing}"
    worst = {}
    for name, t in ref.items():
        got, want = np.asarray(feats[name]), _nhwc(t)
        assert got.shape == want.shape, (name, got.shape, want.shape)
        worst[name] = float(np.max(np.abs(got - want)))
    assert max(worst.values()) <= TOL, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    if family == "resnet":  # the block's ReLU runs twice: each call under path#i, the last also under path
        np.testing.assert_array_equal(feats["layer1.0.relu#1"], feats["layer1.0.relu"])
        np.testing.assert_array_equal(feats["layer1.0.relu#0"], np.maximum(feats["layer1.0.bn1"], 0))
    if family == "mobilenet":
        relu6 = [n for n, m in net.named_modules() if isinstance(m, torch.nn.ReLU6)]
        assert any(float(ref[n].max()) == 6.0 for n in relu6)


def test_train_step_matches_pytorch(torch, families):
    """One SGD step in train mode: same loss, same gradient of every parameter, same updated parameters and
    running statistics (PyTorch's momentum 0.1 and unbiased running variance)."""
    torch.manual_seed(1)
    net = families.randomize_bn(families.ResNetLike()).train()
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 3])
    model, variables = models.from_torch(net, x)
    lr = 0.1

    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_t = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss_t.backward()
    grads_t = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    opt.step()

    def loss_fn(params, stats, images, labels):
        (logits, _), new = model.apply({"params": params, "batch_stats": stats}, images, train=True,
                                       mutable=["batch_stats"])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1)), new["batch_stats"]

    (loss_j, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"], variables["batch_stats"], jnp.asarray(_nhwc(x)), jnp.asarray(y.numpy()))
    new_params = jax.tree.map(lambda p, g: p - lr * g, variables["params"], grads)
    assert abs(float(loss_j) - loss_t.item()) <= 1e-5

    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    for name, g in grads_t.items():
        path, leaf = name.rsplit(".", 1)
        jax_leaf = {"weight": "kernel" if "kernel" in grads[path] else "scale", "bias": "bias"}[leaf]
        np.testing.assert_allclose(_to_torch_layout(np.asarray(grads[path][jax_leaf])), g.numpy(), atol=1e-5,
                                   err_msg=f"gradient of {name}")
        np.testing.assert_allclose(_to_torch_layout(np.asarray(new_params[path][jax_leaf])), sd[name], atol=1e-5,
                                   err_msg=f"updated {name}")
    for path, s in stats.items():
        np.testing.assert_allclose(np.asarray(s["mean"]), sd[f"{path}.running_mean"], atol=1e-5)
        np.testing.assert_allclose(np.asarray(s["var"]), sd[f"{path}.running_var"], atol=1e-5)


def _to_torch_layout(a):
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    return a.T if a.ndim == 2 else a
