"""Config helpers: presets, typed key=value overrides, dict round trips."""

from __future__ import annotations

import dataclasses
import json

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
