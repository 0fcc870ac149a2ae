"""Config helpers: presets, typed key=value overrides, dict round trips."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from jinterp.core import config as C
from jinterp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Outer:
    n: int = 1
    flag: bool = False
    label: str = "a"
    size: tuple[int, int] = (2, 3)
    maybe: int | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_overrides_parse_by_field_type():
    cfg = C.apply_overrides(Outer(), ["n=1e3", "flag=yes", "label=x=y", "size=4,5", "maybe=none",
                                      "inner.rate=2", "inner.names=(a, b)"])
    assert cfg == Outer(n=1000, flag=True, label="x=y", size=(4, 5), maybe=None, inner=Inner(2.0, ("a", "b")))
    assert isinstance(cfg.inner.rate, float)
    assert C.apply_overrides(Outer(), ["maybe=7", "inner.names="]).maybe == 7
    assert C.apply_overrides(Outer(), []) == Outer()


@pytest.mark.parametrize("item,match", [
    ("nope=1", r"unknown config key 'nope' for Outer; valid keys: n, flag, label, size, maybe, inner.rate"),
    ("inner.nope=1", "unknown config key 'inner.nope'"),
    ("n.x=1", "unknown config key 'n.x'"),
    ("n=1.5", "cannot set n='1.5'.*int"),
    ("flag=2", "expected a bool"),
    ("size=1,2,3", "expected 2 comma-separated values"),
    ("inner=3", "inner is a group of settings; set its fields instead: inner.rate, inner.names"),
    ("n", "not of the form key=value"),
])
def test_override_errors(item, match):
    with pytest.raises(ConfigError, match=match):
        C.apply_overrides(Outer(), [item])


def test_dict_round_trip_and_json():
    cfg = C.apply_overrides(C.TrainBackboneConfig.tiny(), ["optim.freeze=^conv1,^bn1", "widths=8,16"])
    d = C.to_dict(cfg)
    assert d["optim"]["freeze"] == ["^conv1", "^bn1"]
    assert C.from_dict(C.TrainBackboneConfig, json.loads(json.dumps(d))) == cfg
    with pytest.raises(ConfigError, match="unknown config key.*'optim.bogus'"):
        C.from_dict(C.TrainBackboneConfig, {**d, "optim": {**d["optim"], "bogus": 1}})
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        C.from_dict(C.TrainBackboneConfig, {**d, "batch_size": "64"})


def test_diff():
    a, b = C.TrainBackboneConfig.tiny(), C.apply_overrides(C.TrainBackboneConfig.tiny(), ["optim.lr=0.5"])
    assert C.diff(a, b) == {"optim.lr": (a.optim.lr, 0.5)}


def test_presets_are_valid_and_frozen():
    for name in C.PRESETS:
        cfg = C.preset(C.TrainBackboneConfig, name)
        cfg.validate()
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.steps = 3
    assert C.TrainBackboneConfig.paper().optim.name == "sgd"
    with pytest.raises(ConfigError, match="unknown config preset 'big'"):
        C.preset(C.TrainBackboneConfig, "big")


def test_valid_keys_are_dotted():
    keys = C.valid_keys(C.TrainBackboneConfig)
    assert "optim.lr" in keys and "arch" in keys and "optim" not in keys


# ------------------------------------------------------------------ typed fields through the Python API (defect 3)
def _all_method_configs():
    from jinterp.methods.basis.config import BasisConfig
    from jinterp.methods.basis.ibd import IBDConfig
    from jinterp.methods.basis.uibe import UIBEConfig
    from jinterp.methods.cladec.config import ClaDecConfig
    from jinterp.methods.csg.config import CSGConfig, PathOptim
    from jinterp.methods.explainer.config import ExplainerConfig
    from jinterp.methods.graph.config import GraphConfig

    return [C.TrainBackboneConfig, C.OptimConfig, BasisConfig, ClaDecConfig, CSGConfig, PathOptim, ExplainerConfig,
            GraphConfig, UIBEConfig, IBDConfig]


@pytest.mark.parametrize("cls", _all_method_configs(), ids=lambda c: c.__name__)
def test_every_config_rejects_wrongly_typed_fields_through_replace(cls):
    cfg = cls()
    types_ = C._field_types(cls)
    checked = 0
    for f in dataclasses.fields(cls):
        t, _ = C._unwrap_optional(types_[f.name])
        bad = {int: "64", float: "0.1", str: 3, bool: "yes"}.get(t)
        if bad is None and typing.get_origin(t) is tuple:
            bad = 0.1  # a scalar where a tuple is expected
        if bad is None:
            continue
        with pytest.raises(ConfigError, match=rf"^{cls.__name__}\.{f.name}: expected .*got {bad!r}"):
            dataclasses.replace(cfg, **{f.name: bad})
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("kw,match", [
    ({"alphas": 0.1}, r"ClaDecConfig\.alphas: expected tuple\[float, \.\.\.\], got 0\.1 \(float\)"),
    ({"batch_size": "64"}, r"ClaDecConfig\.batch_size: expected int, got '64' \(str\)"),
    ({"lr": "0.1"}, r"ClaDecConfig\.lr: expected float, got '0\.1' \(str\)"),
    ({"lr": float("nan")}, r"ClaDecConfig\.lr: expected float, got nan"),
    ({"epochs": 2.5}, r"ClaDecConfig\.epochs: expected int, got 2\.5"),
    ({"refae": 1}, r"ClaDecConfig\.refae: expected bool, got 1 \(int\)"),
    ({"layers": ("relu3", 4)}, r"ClaDecConfig\.layers: expected str, got 4"),
    ({"backbone": 3}, r"ClaDecConfig\.backbone: expected TrainBackboneConfig, got 3"),
])
def test_cladec_config_typed_errors_are_one_line(kw, match):
    from jinterp.methods.cladec.config import ClaDecConfig

    with pytest.raises(ConfigError, match=match) as e:
        dataclasses.replace(ClaDecConfig.tiny(), **kw)
    assert "\n" not in str(e.value)


def test_nested_and_constructor_fields_are_checked():
    with pytest.raises(ConfigError, match=r"OptimConfig\.lr: expected float, got '0\.1'"):
        dataclasses.replace(C.TrainBackboneConfig.tiny().optim, lr="0.1")
    with pytest.raises(ConfigError, match=r"TrainBackboneConfig\.optim\.name: expected Literal"):
        C.TrainBackboneConfig(optim={"name": "rmsprop"})
    from jinterp.methods.basis.config import BasisConfig
    from jinterp.methods.basis.uibe import UIBEConfig

    # UIBEConfig checks its own fields when it is built; BasisConfig checks that its uibe field is one.
    with pytest.raises(ConfigError, match=r"UIBEConfig\.lr: expected float, got '0\.1'"):
        UIBEConfig(lr="0.1")
    with pytest.raises(ConfigError, match=r"BasisConfig\.uibe: expected UIBEConfig, got 3"):
        dataclasses.replace(BasisConfig.tiny(), uibe=3)


def test_lossless_coercions_are_stored():
    import numpy as np

    from jinterp.methods.cladec.config import ClaDecConfig

    cfg = dataclasses.replace(ClaDecConfig.tiny(), lr=1, alphas=[0, 0.5], batch_size=np.int64(32),
                              backbone=C.to_dict(ClaDecConfig.tiny().backbone))
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.alphas == (0.0, 0.5) and all(type(a) is float for a in cfg.alphas)
    assert cfg.batch_size == 32 and type(cfg.batch_size) is int
    assert cfg.backbone == ClaDecConfig.tiny().backbone
    hash(cfg)  # still hashable: every list became a tuple
