"""``jinterp basis`` end to end on a tiny synthparts set with a saved (untrained) convnet: every basis scored,
files written, scores finite and consistent."""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.errors import ConfigError
from jinterp.methods.basis import cli, ibd, uibe
from jinterp.methods.basis.config import BasisConfig


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model = backbones.create("convnet", 6, widths=(8, 8, 16, 16))
    variables = backbones.init(model, jax.random.key(0), (32, 32, 3))
    path = tmp_path_factory.mktemp("w") / "params.npz"
    torch_import.save_variables(path, variables, {"arch": "convnet", "num_classes": 6,
                                                  "config": {"widths": [8, 8, 16, 16]}})
    return path


def _cfg(weights, **kw):
    return BasisConfig(weights=str(weights), data="synthparts:n_train=24,n_test=12,size=32", layer="relu3",
                       n_train=24, n_test=12, batch_size=12, fit_pixels=2000, figure_directions=2,
                       figure_images=2, uibe=uibe.UIBEConfig(num_directions=8, batch_size=256, epochs=2),
                       ibd=ibd.IBDConfig(epochs=2, max_positives=50, min_positives=2), **kw)


def test_cli_runs_every_basis_and_writes_results(weights, tmp_path, capsys):
    args = argparse.Namespace(config="tiny", overrides=[], workdir=str(tmp_path), data=None, weights=None,
                              layer=None, method=None, arch=None, quiet=True)
    from jinterp.methods.basis import program

    res = program.run(_cfg(weights), tmp_path, progress=False)
    assert set(res["bases"]) == {"natural@q", "random@q", "random@rate", "uibe@q", "uibe@own", "ibd@q", "ibd@own"}
    for k, v in res["bases"].items():
        assert np.isfinite([v["S1"], v["S2"]]).all() and 0 <= v["S2"] <= v["S1"] + 1e-6, k
        assert 0 <= v["unique_detectors"] <= v["detectors"] <= v["directions"], k
    assert res["bases"]["natural@q"]["directions"] == 16 and res["bases"]["uibe@own"]["directions"] == 8
    b = res["bases"]
    # Every basis reports its firing rate; the quantile rule fires on about its quantile (strict >, ties below).
    for k, v in b.items():
        assert 0 <= v["firing_rate_train"] <= 1 and 0 <= v["firing_rate_val"] <= 1, k
    assert b["natural@q"]["firing_rate_train"] <= 0.005 + 1e-3
    # The random baseline is matched to UIBE@own's rate (target from the fitting sample, measured on the split) and
    # has as many directions as UIBE.
    assert b["random@rate"]["directions"] == 8
    assert b["random@rate"]["target_rate"] == pytest.approx(b["uibe@own"]["firing_rate_train"], abs=0.02)
    assert b["random@rate"]["firing_rate_train"] == pytest.approx(b["random@rate"]["target_rate"], abs=0.01)
    # UIBE@own is dissected with its own thresholds, not NetDissect's quantile ones (issue #20 wiring bug).
    z = np.load(tmp_path / "bases.npz")
    assert not np.allclose(z["uibe@own_thresholds"], z["uibe@q_thresholds"])
    assert b["uibe@own"]["firing_rate_train"] > 2 * b["uibe@q"]["firing_rate_train"]
    assert {"uibe@own S1", "ibd@own S1"} <= set(res["verdicts"])
    # IBD as released: object and part concepts only; ibd@q dissects the centred unit basis vectors.
    assert b["ibd@own"]["concepts"] and all(c.split(":")[0] in ("object", "part") for c in b["ibd@own"]["concepts"])
    np.testing.assert_allclose(z["ibd_basis"].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(z["ibd_basis"], axis=0), 1, atol=1e-5)
    assert all("baselines" in t for t in res["verdicts"].values())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["bases"]["uibe@own"]["S1"] == pytest.approx(res["bases"]["uibe@own"]["S1"])
    np.testing.assert_allclose(z["uibe_basis"].T @ z["uibe_basis"], np.eye(8), atol=1e-5)
    assert z["natural@q_labels"].shape == (16,)
    for f in res["figures"].values():
        assert (tmp_path / "figures").exists() and f.endswith(".png")
    # The CLI path: same program through argparse options.
    args.workdir = str(tmp_path / "cli")
    args.overrides = [f"weights={weights}", "data=synthparts:n_train=24,n_test=12,size=32", "n_train=24",
                      "n_test=12", "batch_size=12", "fit_pixels=2000", "layer=relu3", "figure_directions=1"]
    args.method = ["natural", "random"]
    assert cli.run(args) == 0
    assert "natural@q: S1" in capsys.readouterr().out


def test_bad_config(weights, tmp_path):
    from jinterp.methods.basis import program

    with pytest.raises(ConfigError, match="unknown basis method"):
        program.run(_cfg(weights, methods=("pca",)), tmp_path)
    with pytest.raises(ConfigError, match="channels"):
        program.run(dataclasses_replace(_cfg(weights), uibe=uibe.UIBEConfig(num_directions=99)), tmp_path)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)
