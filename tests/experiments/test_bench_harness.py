"""The benchmark harness: agreement gates timing, rows carry what the table needs, and the quick run works."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import harness

torch = pytest.importorskip("torch")


def _matmul_case(offset: float = 0.0) -> harness.Case:
    a = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    aj, at = jnp.asarray(a), torch.from_numpy(a)
    f = jax.jit(lambda x: x @ x)
    return harness.Case("toy.matmul", {"n": 64}, lambda: f(aj), lambda: at @ at + offset,
                        lambda: float(np.max(np.abs(np.asarray(f(aj)) - (at @ at + offset).numpy()))),
                        atol=1e-3, jax_lowered=lambda: f.lower(aj), items=64)


def test_agreeing_case_is_timed_with_flops():
    row = harness.time_case(_matmul_case(), repeats=3, warmup=1, peak=1e12)
    assert row["agree"] and row["max_abs_diff"] <= 1e-3
    assert len(row["jax"]["times_s"]) == 3 and len(row["torch"]["times_s"]) == 3
    assert row["jax"]["min_s"] <= row["jax"]["median_s"] <= row["jax"]["max_s"]
    assert row["speedup"] == pytest.approx(row["torch"]["median_s"] / row["jax"]["median_s"])
    assert row["flops"] == pytest.approx(2 * 64**3, rel=0.05)  # XLA's count of a 64x64 matmul
    assert 0 < row["fraction_of_peak"] < 1
    assert "toy.matmul" in harness.markdown([row])


def test_disagreeing_case_is_not_timed():
    row = harness.time_case(_matmul_case(offset=1.0), repeats=3, warmup=1)
    assert not row["agree"] and row["max_abs_diff"] == pytest.approx(1.0, abs=1e-3)
    assert "jax" not in row and "speedup" not in row
    assert "**NO**" in harness.markdown([row])


def test_quick_run_writes_table_json_and_plots(tmp_path):
    """`make bench ARGS=--quick`, restricted to the backbone pipeline (the others have their own tests)."""
    from experiments.bench.__main__ import main

    result = main(["--quick", "--only", "backbones", "--repeats", "1", "--no-extras", "--out", str(tmp_path)])
    device = harness.device_name()
    saved = json.loads((tmp_path / f"{device}.json").read_text())
    assert saved == result and saved["quick"]
    rows = saved["results"]
    assert {r["pipeline"] for r in rows} == {"backbone.forward", "backbone.train_step"}
    assert all(r["agree"] for r in rows), [(r["params"], r["max_abs_diff"]) for r in rows]
    md = (tmp_path / f"{device}.md").read_text()
    assert md.count("| backbone.") == len(rows) + len(saved["scaling"])
    assert saved["scaling_plots"] and all((tmp_path / p).is_file() for p in saved["scaling_plots"])


def test_readme_table_is_replaced_between_markers(tmp_path):
    from experiments.bench.__main__ import MARK_BEGIN, MARK_END, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{MARK_BEGIN}\nold\n{MARK_END}\noutro\n")
    assert update_readme("| new |", readme)
    assert readme.read_text() == f"intro\n{MARK_BEGIN}\n| new |\n{MARK_END}\noutro\n"
    (tmp_path / "plain.md").write_text("no markers")
    assert not update_readme("x", tmp_path / "plain.md")


def test_flops_count_the_onednn_convolutions_as_xla_counts_its_own():
    """XLA's cost analysis sees a custom call as 0 FLOPs; the harness adds the oneDNN convolutions' count, which must
    equal XLA's count of the same convolutions (forward, both gradients, vmapped over models, 2 groups, stride 2)."""
    from jax import lax

    from jinterp.nn import _onednn

    if not _onednn.available():
        pytest.skip("oneDNN convolutions not built here")
    args = ((2, 1), ((1, 1), (1, 0)), (1, 1), 2)
    x = jnp.ones((4, 9, 8, 6))
    kernels = jnp.ones((3, 3, 3, 3, 8))  # 3 models of 3x3, Cin/groups = 3, Cout = 8

    def lax_conv(x, k, stride, padding, dilation, groups):
        return lax.conv_general_dilated(x, k, stride, padding, rhs_dilation=dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)

    def flops(conv):
        def loss(x, k):
            return jnp.sum(conv(x, k, *args) ** 2)
        step = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0)))
        case = harness.Case("toy.conv", {}, lambda: None, lambda: None, lambda: 0.0,
                            jax_lowered=lambda: step.lower(x, kernels))
        return harness.flops_of(case)

    with_onednn, with_xla = flops(_onednn.conv2d), flops(lax_conv)
    # taps over real input (padding not counted): rows 9 -> 5 (stride 2, pad 1+1): 2+3+3+3+2 = 13; columns 8 -> 7
    # (pad 1+0): 2+3*6 = 20; per pass 2 x 3 models x 4 images x 8 Cout x 13*20 x 3 Cin/groups
    conv = 2 * 3 * 4 * 8 * (13 * 20) * 3
    assert with_xla == pytest.approx(3 * conv, rel=0.03)  # the rest: the loss's elementwise ops
    assert with_onednn == pytest.approx(with_xla, rel=0.01)
