"""The data set both processes of the multi-host test read (deterministic; a LazyArray that logs what it decodes)."""

import numpy as np

from jinterp.data import Dataset
from jinterp.data.lazy import LazyArray

N = 10


def make_dataset(decoded: list) -> Dataset:
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (N, 4, 4, 3), dtype=np.uint8)
    lazy = LazyArray(N, (4, 4, 3), np.uint8, lambda i: decoded.append(i) or images[i])
    return Dataset(images=lazy, labels=np.arange(N) % 3, num_classes=3, class_names=("a", "b", "c"),
                   masks={"part": rng.integers(0, 4, (N, 4, 4)).astype(np.uint8)},
                   landmarks=rng.uniform(0, 4, (N, 2, 2)), landmark_visible=rng.random((N, 2)) > 0.5)


def conv_features(images):
    """A fixed 3x3 conv + ReLU on normalized images: per-example work on the batch-sharded global array."""
    import jax
    import jax.numpy as jnp

    from jinterp.data import normalize

    kernel = jnp.asarray(np.random.default_rng(3).normal(size=(3, 3, 3, 5)), jnp.float32)
    x = normalize(images, "imagenet")
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y)


def tiny_convnet():
    """A tiny ConvNet (2 conv stages on 4x4 images), its initial variables and ``iter_features``' layer."""
    import jax

    from jinterp import backbones

    model = backbones.create("convnet", num_classes=3, widths=(4, 6))
    return model, backbones.init(model, jax.random.key(5), (4, 4, 3)), "relu2"


def train_step_and_state(mesh=None):
    """``jinterp.core.train``'s jitted classifier step (SGD with momentum, BatchNorm in train mode, padding rows
    masked out of the loss) and its initial state; with ``mesh`` the step is sharded over ``data``."""
    import jax
    import optax

    from jinterp.core import train

    model, variables, _ = tiny_convnet()
    tx = optax.sgd(0.1, momentum=0.9)
    loss = train.make_classifier_loss(model, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    state = train.create_train_state(variables, tx, jax.random.key_data(jax.random.key(11)))
    return train.make_train_step(loss, tx, mesh=mesh), state


OUTPUT_FILES = ("config.json", "figures", "params.npz", "report.html", "result.json", "scores.npz")


def write_outputs(run, pid: int, wrote: list) -> dict:
    """The files programs write directly, each through the process-0 mechanism (``jinterp.core.run.write_file``)
    at its real call site where one is cheap to reach: ClaDec's ``save_tree`` (``params.npz``, read back at once by
    every process), the report's figure savers (``figures/grid.png``, ``figures/bars.png``) and HTML writer
    (``report.html``), and ``Run.write_file`` (``scores.npz``). Their content names ``pid``: a file written by
    process 1 differs from the single-process run's. ``wrote`` collects the files this process actually wrote.
    Returns what this process read back from ``params.npz`` (flattened)."""
    import matplotlib

    matplotlib.use("Agg")
    from jinterp.core import run as runlib
    from jinterp.methods.cladec.program import load_tree, save_tree
    from jinterp.report.figures import _common
    from jinterp.report.figures import basis as basis_figs
    from jinterp.report.html import Section, Table, write_report

    real = runlib.write_file

    def logged(path, write, **kw):  # every write_file call of this process; `wrote` only gets executed writes
        return real(path, lambda tmp: (wrote.append(str(path)), write(tmp))[1], **kw)

    runlib.write_file = logged
    try:
        rng = np.random.default_rng(2)
        save_tree(run.workdir / "params.npz", {"w": rng.normal(size=(3, 2)), "pid": np.asarray(pid)}, by=pid)
        tree, meta = load_tree(run.workdir / "params.npz")  # every process reads it right after (the barrier)
        _common.save(_common.image_grid([[rng.random((4, 4, 3)), rng.random((4, 4, 3))]], title=f"process {pid}"),
                     run.workdir / "figures" / "grid.png")
        basis_figs.score_bars({"pca": {"S1": 0.5, "S2": 0.25 + pid}}, run.workdir / "figures" / "bars.png")
        write_report(run.workdir / "report.html", "two processes", {"process": pid},
                     [Section("s", tables=[Table("t", ["k", "v"], [["pid", pid]])])])
        run.write_file("scores.npz", lambda tmp: np.savez(tmp, scores=rng.random(5), pid=np.asarray(pid)))
    finally:
        runlib.write_file = real
    return {"read/w": np.asarray(tree["w"]), "read/pid": np.asarray(tree["pid"]), "read/by": np.asarray(meta["by"])}
