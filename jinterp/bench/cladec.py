"""ClaDec train steps, JAX vs PyTorch: the decoder step at α = 0 and α > 0 and the RefAE step.

    python -m jinterp.bench.cladec [--quick] [--repeats N]

Official setting (spec A.8): Fashion-MNIST-shaped input (1 x 32 x 32), batch 128, the VGG-11-like classifier of
``models.py`` (random weights with realistic BN statistics), the official decoder for the pre-logit ``flat`` code
(7.2M parameters) and for ``conv4a`` (5.1M), Adam(3e-4, weight decay 1e-5). Both frameworks start from the same
weights and see the same batch and activations; float32, no AMP.

Cases:
* ``cladec.step`` α = 0 — JAX on cached activations without the classifier; PyTorch *hygienic* (no CE term).
* ``cladec.step`` α = 0 ``as released`` — the official loop computes ``0·CE(C(x̂), y)`` and, with the
  classifier's ``requires_grad`` left on, its weight gradients; JAX ``faithful`` computes the CE term too but
  never the classifier's weight gradients (they are not asked for). The speed-up here is partly removed waste.
* ``cladec.step`` α = 0.001 — decoder, frozen classifier on x̂, backward through it, Adam (both hygienic).
* ``refae.step`` — a fresh classifier prefix in train mode + decoder, MSE, Adam.

Agreement (checked before timing): the loss and every gradient of the step, max abs difference relative to the
largest gradient entry (Adam's first update is nearly ``lr·sign(g)``, so comparing updated weights would
amplify round-off on near-zero gradients).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.bench import harness
from jinterp.bench import torch_cladec as tcl
from jinterp.bench.harness import Case, main_for
from jinterp.methods.cladec import evaluation, refae, training
from jinterp.methods.cladec.decoder import make_decoder

LR, WD = 3e-4, 1e-5
FULL = {"batch": 128, "base": 64}
QUICK = {"batch": 16, "base": 16}


def _setup(batch: int, seed: int = 0):
    import torch

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch, 32, 32, 1), dtype=np.uint8)
    y = rng.integers(0, 10, (batch,)).astype(np.int64)
    ref = tcl.reference()
    cls = ref.randomize(tcl.classifier(1, 10), seed, torch.rand(32, 1, 32, 32)).eval()
    variables = torch_import.from_torch("vgg11_bn_cladec", cls.state_dict())
    model = backbones.create("vgg11_bn_cladec", 10)
    return x, y, cls, model, variables


def _rel_diff(jax_tree: dict, torch_tree: dict) -> float:
    a, b = jax.tree.leaves(jax_tree), jax.tree.leaves(torch_tree)
    scale = max(float(np.abs(np.asarray(t)).max()) for t in b) or 1.0
    return max(float(np.abs(np.asarray(u) - np.asarray(t)).max()) for u, t in zip(a, b, strict=True)) / scale


def cladec_case(layer: str, alpha: float, batch: int, base: int, *, as_released: bool = False) -> Case:
    import torch

    x, y, cls, model, variables = _setup(batch)
    act = np.asarray(jax.jit(lambda v, xx: model.apply(v, xx, train=False)[1][layer])(
        variables, training.to_unit(x)))
    in_shape = act.shape[1:] if act.ndim == 2 else (act.shape[3], act.shape[1], act.shape[2])
    torch.manual_seed(1)
    net0 = tcl.ClaDecNet(in_shape, 1, channel_mult=base, image_size=32)
    dec = make_decoder(act.shape[1:], (32, 32, 1), base, layer)
    use_ce = alpha > 0 or as_released
    classify = evaluation.make_classify(model, "vgg11_bn_cladec")
    tx = training.torch_adam(LR, WD)
    step = training.make_sweep_step(dec, tx, classify=classify, use_ce=use_ce)
    data = {"image": jnp.asarray(x), "label": jnp.asarray(y, jnp.int32), "act": jnp.asarray(act)}
    alphas, idx = jnp.asarray([alpha], jnp.float32), jnp.arange(batch)
    cls_vars = variables if use_ce else {}
    stacked = lambda: jax.tree.map(lambda p: jnp.asarray(p)[None], tcl.to_flax(net0))  # noqa: E731
    state = [training.new_state(stacked(), tx, jax.random.key_data(jax.random.key(0)))]

    def jax_fn():
        state[0], metrics = step(state[0], idx, data, alphas, cls_vars)
        return metrics["loss"]

    dev = harness.torch_device()
    net = copy.deepcopy(net0).to(dev)
    opt = tcl.adam(net.parameters(), LR, WD)
    tcls = copy.deepcopy(cls).eval().requires_grad_(as_released).to(dev)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0).to(dev)
    yt, actt = torch.from_numpy(y).to(dev), tcl.nhwc_to_nchw(act).to(dev)

    def torch_fn():
        return tcl.cladec_step(net, opt, tcls, xt, yt, actt, alpha, use_ce=use_ce)

    def check():
        (loss, _, grads) = jax.jit(lambda p: training.sweep_loss_and_grads(
            p, alphas, data, cls_vars, decoder=dec, classify=classify, use_ce=use_ce))(stacked())
        n2 = copy.deepcopy(net0).to(dev)
        out = n2(actt)
        lt = (1 - alpha) * torch.nn.functional.mse_loss(out, xt)
        if use_ce:
            lt = lt + alpha * torch.nn.functional.cross_entropy(tcls(out), yt)
        lt.backward()
        g = tcl.to_flax(n2, grad=True)
        lt = float(lt.detach())
        return max(abs(float(loss[0]) - lt) / max(abs(lt), 1e-12),
                   _rel_diff(jax.tree.map(lambda a: a[0], grads), g))

    params = {"layer": layer, "alpha": alpha, "batch": batch, "px": 32, "base": base}
    if as_released:
        params["variant"] = "as released"
    note = ("JAX faithful (0·CE, no classifier weight grads) vs PyTorch as released (0·CE + classifier weight "
            "grads)" if as_released else ("JAX cached activations, no classifier; PyTorch no CE term"
                                          if alpha == 0 else "frozen classifier in the loss on both sides"))
    return Case("cladec.step", params, jax_fn, torch_fn, check, atol=1e-4, items=batch, note=note,
                jax_lowered=lambda: step.lower(state[0], idx, data, alphas, cls_vars))


def cladec_bf16_case(layer: str, batch: int, base: int) -> Case:
    """The α = 0 decoder step of :func:`cladec_case` in bf16 mixed precision on both sides: float32 master weights
    and Adam; bfloat16 decoder compute (JAX: params and activations cast to bfloat16 inside the loss, output back to
    float32 for the MSE; PyTorch: ``torch.autocast(dtype=torch.bfloat16)``, MSE in float32). Agreement: loss and
    every gradient, relative to the float32 JAX gradients' largest entry (tolerance ``BF16_RTOL``)."""
    import optax
    import torch

    from jinterp.bench.backbones import BF16_RTOL, rel_diff, to_bf16

    x, _, _, model, variables = _setup(batch)
    act = np.asarray(jax.jit(lambda v, xx: model.apply(v, xx, train=False)[1][layer])(
        variables, training.to_unit(x)))
    in_shape = act.shape[1:] if act.ndim == 2 else (act.shape[3], act.shape[1], act.shape[2])
    torch.manual_seed(1)
    net0 = tcl.ClaDecNet(in_shape, 1, channel_mult=base, image_size=32)
    dec = make_decoder(act.shape[1:], (32, 32, 1), base, layer)
    tx = training.torch_adam(LR, WD)
    target, actj = training.to_unit(jnp.asarray(x)), jnp.asarray(act)

    def loss_fn(p, cast):
        out = dec.apply({"params": cast(p)}, cast(actj))
        return training.mse(out.astype(jnp.float32), target)

    @jax.jit
    def step(p, opt):
        loss, g = jax.value_and_grad(loss_fn)(p, to_bf16)
        upd, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, upd), opt, loss

    params0 = lambda: jax.tree.map(jnp.asarray, tcl.to_flax(net0))  # noqa: E731
    state = [params0()]
    state.append(tx.init(state[0]))

    def jax_fn():
        state[0], state[1], loss = step(state[0], state[1])
        return loss

    dev = harness.torch_device()
    device_type = "cuda" if dev == "cuda" else "cpu"  # autocast knows these two
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0).to(dev)
    actt = tcl.nhwc_to_nchw(act).to(dev)
    net = copy.deepcopy(net0).to(dev)
    opt = tcl.adam(net.parameters(), LR, WD)

    def torch_loss(n):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = n(actt)
        return torch.nn.functional.mse_loss(out.float(), xt)

    def torch_fn():
        opt.zero_grad(set_to_none=True)
        loss = torch_loss(net)
        loss.backward()
        opt.step()
        return loss.detach()

    def check():
        grad = jax.jit(jax.value_and_grad(loss_fn), static_argnums=1)
        loss_ref, g_ref = grad(params0(), lambda t: t)
        loss_j, g_j = grad(params0(), to_bf16)
        n2 = copy.deepcopy(net0).to(dev)
        loss_t = torch_loss(n2)
        loss_t.backward()
        g_t = tcl.to_flax(n2, grad=True)
        ref = np.concatenate([np.ravel(a) for a in jax.tree.leaves(g_ref)])
        ours = np.concatenate([np.ravel(a) for a in jax.tree.leaves(g_j)])
        theirs = np.concatenate([np.ravel(a) for a in jax.tree.leaves(g_t)])
        loss_rel = max(abs(float(v) - float(loss_ref)) for v in (loss_j, loss_t.detach().cpu())) / float(loss_ref)
        return max(loss_rel, rel_diff(ours, ref), rel_diff(theirs, ref))

    return Case("cladec.step", {"layer": layer, "alpha": 0.0, "batch": batch, "px": 32, "base": base,
                                "dtype": "bf16 (mixed)"}, jax_fn, torch_fn, check, atol=BF16_RTOL, items=batch,
                note=("bf16 mixed precision: float32 weights + Adam, bfloat16 decoder (JAX: cast inside the loss; "
                      "PyTorch: torch.autocast bf16); agreement = loss and gradients relative to the float32 JAX "
                      f"step, tolerance {BF16_RTOL:g}"),
                jax_lowered=lambda: step.lower(state[0], state[1]))


def refae_case(layer: str, batch: int, base: int) -> Case:
    import torch

    x, _, _, model, _ = _setup(batch, seed=1)
    torch.manual_seed(2)
    fresh = tcl.classifier(1, 10)                       # PyTorch default init, as the official RefAE
    enc_vars = torch_import.from_torch("vgg11_bn_cladec", fresh.state_dict())
    enc = refae.make_encoder("vgg11_bn_cladec", model, enc_vars, (32, 32, 1), layer)
    p_enc, stats, frozen = enc.split(enc_vars)
    act_shape = jax.eval_shape(lambda v, xx: model.apply(v, xx, train=False)[1][layer], enc_vars,
                               jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)).shape[1:]
    in_shape = act_shape if len(act_shape) == 1 else (act_shape[2], act_shape[0], act_shape[1])
    torch.manual_seed(3)
    net0 = tcl.ClaDecNet(in_shape, 1, channel_mult=base, image_size=32)
    dec = make_decoder(act_shape, (32, 32, 1), base, layer)
    tx = training.torch_adam(LR, WD)
    step = refae.make_refae_step(enc, dec, tx)
    data, idx = {"image": jnp.asarray(x)}, jnp.arange(batch)
    params0 = lambda: {"encoder": jax.tree.map(jnp.array, p_enc),  # noqa: E731
                       "decoder": jax.tree.map(jnp.asarray, tcl.to_flax(net0))}
    state = [training.new_state(params0(), tx, jax.random.key_data(jax.random.key(0)),
                                jax.tree.map(jnp.array, stats))]

    def jax_fn():
        state[0], metrics = step(state[0], idx, data, frozen)
        return metrics["loss"]

    dev = harness.torch_device()

    def torch_model():
        m = tcl.RefAE(tcl.cladec_prefix(copy.deepcopy(fresh), layer), copy.deepcopy(net0))
        return m.train().to(dev)

    tm = torch_model()
    opt = tcl.adam(tm.parameters(), LR, WD)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0).to(dev)

    def torch_fn():
        return tcl.refae_step(tm, opt, xt)

    def check():
        rng = jax.random.key(5)
        (loss, _), grads = jax.jit(jax.value_and_grad(
            lambda p: refae.refae_loss(p, stats, frozen, data["image"], rng, encoder=enc, decoder=dec),
            has_aux=True))(params0())
        m = torch_model()
        lt = torch.nn.functional.mse_loss(m(xt), xt)
        lt.backward()
        g_dec = tcl.to_flax(m.dec, grad=True)
        # the prefix's gradients under the classifier's state_dict names ("0.conv1.weight" -> "conv0.conv1.weight")
        sd = {k: torch.zeros_like(v) for k, v in fresh.state_dict().items()}
        for k, p in m.enc.named_parameters():
            i, rest = k.split(".", 1)
            sd[f"{fresh.names[int(i)]}.{rest}"] = p.grad.detach().cpu().clone()
        g_enc_flat = traverse_util.flatten_dict(torch_import.from_torch("vgg11_bn_cladec", sd)["params"], sep="/")
        ours = {"decoder": grads["decoder"], "encoder": {k: grads["encoder"][k] for k in p_enc}}
        theirs = {"decoder": g_dec, "encoder": {k: g_enc_flat[k] for k in p_enc}}
        return max(abs(float(loss) - float(lt)) / float(lt), _rel_diff(ours, theirs))

    return Case("refae.step", {"layer": layer, "batch": batch, "px": 32, "base": base}, jax_fn, torch_fn, check,
                atol=1e-4, items=batch, note="fresh VGG-11-like prefix in train mode (BN batch stats) + decoder",
                jax_lowered=lambda: step.lower(state[0], idx, data, frozen))


# α ≤ 0.001: at α = 0.01 the per-model gradients agree only to 4.9e-4 of the largest entry at full size (losses to
# 1e-7; the gap grows linearly with α, i.e. it is in the CE gradient through the classifier, the path the α = 0.001
# cladec.step row checks). The step does the same work for any α.
SWEEP_ALPHAS, SWEEP_SEEDS = (0.0, 0.0005, 0.001), 2


def sweep_case(layer: str, batch: int, base: int, *, torch_way: str) -> Case:
    """K = 3 α × 2 seeds decoders, one train step each. JAX: the ClaDec program's own vmapped sweep step over the
    stacked params (``training.make_sweep_step``). PyTorch ``torch_way="loop"``: a Python loop over the K models
    (the natural way, one optimizer each); ``"torch.func"``: ``stack_module_state`` + ``vmap(functional_call)``.

    Agreement: model k's loss and gradients from the JAX sweep equal those of model k trained alone in PyTorch
    (relative to the largest gradient entry), and the PyTorch ensemble's per-model losses equal the loop's."""
    import torch

    torch.manual_seed(0)             # _setup's BN-statistics batch is torch.rand: same classifier for either way
    x, y, cls, model, variables = _setup(batch)
    act = np.asarray(jax.jit(lambda v, xx: model.apply(v, xx, train=False)[1][layer])(
        variables, training.to_unit(x)))
    in_shape = act.shape[1:] if act.ndim == 2 else (act.shape[3], act.shape[1], act.shape[2])
    alpha_list = [a for _ in range(SWEEP_SEEDS) for a in SWEEP_ALPHAS]
    nets0 = []
    for k in range(len(alpha_list)):
        torch.manual_seed(10 + k // len(SWEEP_ALPHAS))       # one init per seed, shared across that seed's α
        nets0.append(tcl.ClaDecNet(in_shape, 1, channel_mult=base, image_size=32))
    dec = make_decoder(act.shape[1:], (32, 32, 1), base, layer)
    classify = evaluation.make_classify(model, "vgg11_bn_cladec")
    tx = training.torch_adam(LR, WD)
    step = training.make_sweep_step(dec, tx, classify=classify, use_ce=True)
    data = {"image": jnp.asarray(x), "label": jnp.asarray(y, jnp.int32), "act": jnp.asarray(act)}
    alphas, idx = jnp.asarray(alpha_list, jnp.float32), jnp.arange(batch)
    stacked = lambda: jax.tree.map(lambda *ps: jnp.stack([jnp.asarray(p) for p in ps]),  # noqa: E731
                                   *[tcl.to_flax(n) for n in nets0])
    state = [training.new_state(stacked(), tx, jax.random.key_data(jax.random.key(0)))]

    def jax_fn():
        state[0], metrics = step(state[0], idx, data, alphas, variables)
        return metrics["loss"]

    dev = harness.torch_device()
    tcls = copy.deepcopy(cls).eval().requires_grad_(False).to(dev)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0).to(dev)
    yt, actt = torch.from_numpy(y).to(dev), tcl.nhwc_to_nchw(act).to(dev)
    if torch_way == "loop":
        nets = [copy.deepcopy(n).to(dev) for n in nets0]
        opts = [tcl.adam(n.parameters(), LR, WD) for n in nets]

        def torch_fn():
            return tcl.sweep_loop_step(nets, opts, tcls, xt, yt, actt, alpha_list)
    elif torch_way == "torch.func":
        ens = tcl.StackedSweep([copy.deepcopy(n).to(dev) for n in nets0], tcls, alpha_list, LR, WD)

        def torch_fn():
            return ens.step(xt, yt, actt)
    else:
        raise ValueError(torch_way)

    def check():
        (loss, _, grads) = jax.jit(lambda p: training.sweep_loss_and_grads(
            p, alphas, data, variables, decoder=dec, classify=classify, use_ce=True))(stacked())
        worst, loop_losses = 0.0, []
        for k, (n0, alpha) in enumerate(zip(nets0, alpha_list, strict=True)):
            n2 = copy.deepcopy(n0).to(dev)
            out = n2(actt)
            lt = (1 - alpha) * torch.nn.functional.mse_loss(out, xt) + alpha * torch.nn.functional.cross_entropy(
                tcls(out), yt)
            lt.backward()
            lt = float(lt.detach())
            loop_losses.append(lt)
            worst = max(worst, abs(float(loss[k]) - lt) / max(abs(lt), 1e-12),
                        _rel_diff(jax.tree.map(lambda a, k=k: a[k], grads), tcl.to_flax(n2, grad=True)))
        ens_losses = tcl.StackedSweep([copy.deepcopy(n).to(dev) for n in nets0], tcls, alpha_list, LR, WD).losses(
            xt, yt, actt).detach().cpu().numpy()
        return max(worst, float(np.max(np.abs(ens_losses - np.asarray(loop_losses)) / np.abs(loop_losses))))

    params = {"layer": layer, "models": len(alpha_list), "alphas": "x".join(map(str, SWEEP_ALPHAS)),
              "seeds": SWEEP_SEEDS, "batch": batch, "px": 32, "base": base, "torch": torch_way}
    note = ("K decoders in one jitted vmapped step vs PyTorch " +
            ("Python loop over the K models" if torch_way == "loop" else "torch.func vmap(functional_call)"))
    return Case("cladec.sweep_step", params, jax_fn, torch_fn, check, atol=1e-4, items=batch * len(alpha_list),
                note=note, jax_lowered=lambda: step.lower(state[0], idx, data, alphas, variables))


def cases(quick: bool, bf16: bool | None = None) -> list[Case]:
    """The rows; with ``bf16`` (default: on a GPU) the α = 0 flat step in bf16 right after its float32 row."""
    s = QUICK if quick else FULL
    out = [cladec_case("flat", 0.0, s["batch"], s["base"]),
           cladec_case("flat", 0.0, s["batch"], s["base"], as_released=True),
           cladec_case("flat", 0.001, s["batch"], s["base"]),
           refae_case("flat", s["batch"], s["base"]),
           sweep_case("flat", s["batch"], s["base"], torch_way="loop"),
           sweep_case("flat", s["batch"], s["base"], torch_way="torch.func")]
    if harness.on_gpu() if bf16 is None else bf16:
        out.insert(1, cladec_bf16_case("flat", s["batch"], s["base"]))
    if not quick:
        out += [cladec_case("conv4a", 0.0, s["batch"], s["base"]),
                cladec_case("conv4a", 0.001, s["batch"], s["base"])]
    return out


def main(argv=None):
    return main_for(cases, argv, "cladec")


if __name__ == "__main__":
    main()
