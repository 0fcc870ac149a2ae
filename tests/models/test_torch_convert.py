"""from_torch's contract beyond parity: a converted model saves to one file and reloads without PyTorch; what
cannot be lowered is a one-line ModelError naming the op, the module path and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jinterp import models
from jinterp.errors import JinterpError, ModelError


def test_saved_model_reloads_without_torch(tmp_path, torch, families):
    torch.manual_seed(0)
    net = families.randomize_bn(families.MobileNetLike()).eval()
    x = torch.randn(2, 3, 16, 16)
    model, variables = models.from_torch(net, x)
    path = models.save_model(tmp_path / "mobilenet.npz", model, variables, {"num_classes": 6})
    np.save(tmp_path / "x.npy", x.numpy().transpose(0, 2, 3, 1))
    with torch.no_grad():
        np.save(tmp_path / "want.npy", net(x).numpy())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import numpy as np
        from jinterp import models
        model, variables, meta = models.load_saved_model({str(path)!r})
        logits, feats = model.apply(variables, np.load({str(tmp_path / "x.npy")!r}))
        err = float(np.abs(np.asarray(logits) - np.load({str(tmp_path / "want.npy")!r})).max())
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None and m.split(".")[0] == "torch"]
        print("OK", err, meta["num_classes"], "features.2.conv.4" in feats)
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    tag, err, n, has = out.stdout.split()
    assert tag == "OK" and float(err) <= 1e-4 and n == "6" and has == "True"


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    return msg


def test_unsupported_op_names_op_and_module(torch):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.cumsum(self.conv(x), dim=1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x).mean((2, 3))

    with pytest.raises(ModelError) as e:
        models.from_torch(Net(), torch.zeros(1, 3, 8, 8))
    msg = _one_line(e.value)
    assert "'cumsum'" in msg and "'block'" in msg and "Replace it" in msg


def test_data_dependent_control_flow_is_a_jinterp_error(torch):
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 2)

        def forward(self, x):
            x = x.mean((2, 3))
            if x.sum() > 0:  # depends on the data: fx cannot trace it
                x = -x
            return self.head(x)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Branchy()

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(ModelError) as e:
        models.from_torch(Net(), torch.zeros(1, 3, 8, 8))
    msg = _one_line(e.value)
    assert "'inner'" in msg and "control flow" in msg and "torch.where" in msg


@pytest.mark.parametrize("case", ["not_a_module", "nchw_3d", "two_inputs", "circular_pad"])
def test_bad_models_and_inputs(torch, case):
    class TwoInputs(torch.nn.Module):
        def forward(self, x, y):
            return x + y

    module, example = {
        "not_a_module": (lambda x: x, torch.zeros(1, 3, 8, 8)),
        "nchw_3d": (torch.nn.Conv2d(3, 4, 3), torch.zeros(3, 8, 8)),
        "two_inputs": (TwoInputs(), torch.zeros(1, 3, 8, 8)),
        "circular_pad": (torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), torch.zeros(1, 3, 8, 8)),
    }[case]
    with pytest.raises(JinterpError) as e:
        models.from_torch(module, example)
    _one_line(e.value)


def test_wrong_input_channels_is_a_jinterp_error(torch, families):
    model, variables = models.from_torch(families.VGGLike().eval(), torch.zeros(1, 3, 16, 16))
    with pytest.raises(JinterpError):
        model.apply(variables, np.zeros((1, 16, 16, 1), np.float32))
    with pytest.raises(ModelError, match="add a batch axis"):
        model.apply(variables, np.zeros((16, 16, 3), np.float32))
    assert jax.eval_shape(lambda v: model.apply(v, np.zeros((1, 16, 16, 3), np.float32)), variables)[0].shape \
        == (1, 5)
