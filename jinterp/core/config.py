"""Frozen dataclass configs: presets, ``key=value`` overrides, and dict round trips.

Every method has one frozen dataclass config with two presets, ``paper()`` (the published setting) and
``tiny()`` (seconds on a 2-core CPU). Configs nest (``optim.lr``); overrides from the command line are parsed
by the *declared type* of the field, so ``--set optim.lr=1e-3`` yields a float and ``--set freeze=a,b`` a
tuple. Nothing here knows about a particular method.

    cfg = apply_overrides(TrainBackboneConfig.tiny(), ["optim.lr=0.05", "steps=200"])
    meta = to_dict(cfg)                         # JSON-ready, stored with checkpoints
    assert from_dict(TrainBackboneConfig, meta) == cfg
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from jinterp.errors import ConfigError

C = TypeVar("C")

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


# ----------------------------------------------------------------------------------------------- introspection
@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    # `from __future__ import annotations` makes annotations strings; resolve them once per class.
    return typing.get_type_hints(cls)


def valid_keys(cfg_or_cls: Any, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a config (``["arch", ..., "optim.lr", ...]``)."""
    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    types_ = _field_types(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        t = types_[f.name]
        if dataclasses.is_dataclass(t):
            keys += valid_keys(t, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _unwrap_optional(t: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (t, False)."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(t)) == 2:
            return args[0], True
    return t, False


# ----------------------------------------------------------------------------------------------------- parsing
def parse_value(text: str, t: Any, key: str = "value") -> Any:
    """Parses the command-line string ``text`` as type ``t``.

    Supported: ``int``, ``float``, ``bool`` (true/false/1/0/yes/no), ``str``, ``X | None`` (``none``/``null``),
    ``Literal[...]``, and tuples ``tuple[X, ...]`` / ``tuple[X, Y]`` written ``a,b,c`` (or ``(a, b)``; an
    empty string or ``()`` is the empty tuple). Raises ConfigError naming ``key`` on failure.
    """
    t, optional = _unwrap_optional(t)
    s = text.strip()
    if optional and s.lower() in ("none", "null"):
        return None
    origin = typing.get_origin(t)
    try:
        if t is bool:
            if s.lower() in _TRUE:
                return True
            if s.lower() in _FALSE:
                return False
            raise ValueError(f"expected a bool (true/false), got {text!r}")
        if t is int:
            try:
                return int(s)
            except ValueError:
                f = float(s)  # accept 1e3 when it is integral
                if not f.is_integer():
                    raise ValueError(f"expected an int, got {text!r}") from None
                return int(f)
        if t is float:
            f = float(s)
            if not math.isfinite(f):
                raise ValueError(f"expected a finite number, got {text!r}")
            return f
        if t is str:
            return text
        if origin is typing.Literal:
            choices = typing.get_args(t)
            for c in choices:
                if str(c) == s:
                    return c
            raise ValueError(f"expected one of {list(choices)}, got {text!r}")
        if origin is tuple:
            args = typing.get_args(t)
            if s.startswith(("(", "[")) and s.endswith((")", "]")):
                s = s[1:-1]
            parts = [p for p in (x.strip() for x in s.split(",")) if p != ""] if s.strip() else []
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(parse_value(p, args[0], key) for p in parts)
            if len(parts) != len(args):
                raise ValueError(f"expected {len(args)} comma-separated values, got {len(parts)}")
            return tuple(parse_value(p, a, key) for p, a in zip(parts, args, strict=True))
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"cannot set {key}={text!r}: {e} (field type {_type_name(t)})") from None
    raise ConfigError(f"cannot set {key}: field type {_type_name(t)} is not settable from the command line")


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) if typing.get_origin(t) is None else str(t).replace("typing.", "")


def _check_value(value: Any, t: Any, key: str) -> Any:
    """Validates (and losslessly coerces) a Python value against a field type; used by from_dict, replace and
    every config's ``__post_init__`` (through :func:`check_field_types`).

    Accepted coercions: an integral number for a ``float`` field (``lr=1`` -> ``1.0``), NumPy scalars for
    ``int``/``float``, a list for a tuple, a path object for a ``str``, a mapping for a nested config. Never a
    string for a number (``batch_size='64'``) nor a scalar for a tuple (``alphas=0.1``).
    """
    t, optional = _unwrap_optional(t)
    if value is None and optional:
        return None
    origin = typing.get_origin(t)
    if dataclasses.is_dataclass(t):
        if isinstance(value, t):
            return value
        if isinstance(value, Mapping):
            return from_dict(t, value, _prefix=key + ".")
    elif t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif t is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
    elif origin is typing.Literal:
        if value in typing.get_args(t):
            return value
    elif origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(t)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(v, args[0], key) for v in value)
        if len(value) == len(args):
            return tuple(_check_value(v, a, key) for v, a in zip(value, args, strict=True))
    elif t is Any:
        return value
    raise ConfigError(f"{key}: expected {_type_name(t)}, got {value!r} ({type(value).__name__})")


def check_field_types(cfg: Any) -> None:
    """Checks every field of the (frozen) dataclass ``cfg`` against its declared type, in place.

    Called from each config's ``__post_init__``, so ``dataclasses.replace(cfg, batch_size='64')`` or
    ``ClaDecConfig(alphas=0.1)`` raises a one-line ConfigError naming the field, the expected type and the value
    (the command line gets the same check through :func:`parse_value`). Lossless coercions (see
    :func:`_check_value`) are written back, so ``lr=1`` is stored as ``1.0`` and a list as a tuple. Nested
    configs without a check of their own are checked here too (field names dotted).
    """
    _check_fields(cfg, type(cfg).__name__ + ".")


def _check_fields(cfg: Any, prefix: str) -> None:
    types_ = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        checked = _check_value(value, types_[f.name], prefix + f.name)
        if checked is not value:
            object.__setattr__(cfg, f.name, checked)  # frozen: the only way to store the coerced value
        if dataclasses.is_dataclass(checked) and not hasattr(type(checked), "__post_init__"):
            _check_fields(checked, prefix + f.name + ".")


# --------------------------------------------------------------------------------------------------- overrides
def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.1)")
    key, value = item.split("=", 1)
    return key.strip(), value


def _set_path(cfg: Any, path: list[str], value_text: str, full_key: str, root: Any) -> Any:
    cls = type(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    head = path[0]
    if head not in names:
        raise ConfigError(_unknown_key_message(full_key, root))
    t = _field_types(cls)[head]
    if len(path) == 1:
        if dataclasses.is_dataclass(t):
            raise ConfigError(
                f"{full_key} is a group of settings; set its fields instead: "
                + ", ".join(valid_keys(t, full_key + "."))
            )
        new = parse_value(value_text, t, full_key)
    else:
        if not dataclasses.is_dataclass(t):
            raise ConfigError(_unknown_key_message(full_key, root))
        new = _set_path(getattr(cfg, head), path[1:], value_text, full_key, root)
    return dataclasses.replace(cfg, **{head: new})


def _unknown_key_message(key: str, cfg: Any) -> str:
    return f"unknown config key {key!r} for {type(cfg).__name__}; valid keys: " + ", ".join(valid_keys(cfg))


def apply_overrides(cfg: C, overrides: Iterable[str]) -> C:
    """Returns ``cfg`` with ``key=value`` overrides applied (dotted keys for nested configs).

    Values are parsed by the field's declared type. An unknown key or a value of the wrong type raises
    ConfigError listing the valid keys / the expected type. The result is validated with ``validate()``
    when the config class defines it.
    """
    for item in overrides:
        key, value = _split_override(item)
        if not key:
            raise ConfigError(f"override {item!r} has an empty key; valid keys: " + ", ".join(valid_keys(cfg)))
        cfg = _set_path(cfg, key.split("."), value, key, cfg)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


# ------------------------------------------------------------------------------------------------ (de)serialize
def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples become lists, JSON-ready)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def from_dict(cls: type[C], d: Mapping[str, Any], *, _prefix: str = "") -> C:
    """Inverse of ``to_dict``; unknown keys or wrong types raise ConfigError. Missing keys take defaults."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{_prefix or cls.__name__}: expected a mapping, got {type(d).__name__}")
    types_ = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[_prefix + k for k in unknown]} for {cls.__name__}; valid keys: "
            + ", ".join(valid_keys(cls, _prefix))
        )
    kwargs = {k: _check_value(v, types_[k], _prefix + k) for k, v in d.items()}
    return cls(**kwargs)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def diff(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs (or their dicts): key -> (a_value, b_value)."""
    da = a if isinstance(a, Mapping) else to_dict(a)
    db = b if isinstance(b, Mapping) else to_dict(b)
    out: dict[str, tuple[Any, Any]] = {}

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}{k}.")
        elif x != y:
            out[prefix[:-1]] = (x, y)

    walk(da, db, "")
    return out


# --------------------------------------------------------------------------------------------------- the configs
@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer + learning-rate schedule; shared by every trainer (see ``train.make_optimizer``).

    ``schedule``: ``constant`` | ``cosine`` (to 0 at the last step) | ``step`` (multiply by ``decay_factor`` at
    each step in ``decay_steps``, given as fractions of the run when < 1, else absolute steps). ``warmup_steps``
    ramps linearly from 0. ``weight_decay`` is coupled L2 (PyTorch SGD/Adam) for ``sgd``/``adam`` and decoupled
    for ``adamw``; it applies to params with ndim > 1 (kernels) only. ``clip_norm`` > 0 clips the global
    gradient norm. ``freeze`` holds regexes matched (``re.search``) against ``/``-joined param paths such as
    ``features_0/kernel``; matching params get zero updates.
    """

    name: typing.Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 5e-4
    schedule: typing.Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = 0
    decay_steps: tuple[float, ...] = ()
    decay_factor: float = 0.1
    clip_norm: float = 0.0
    freeze: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_field_types(self)

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.clip_norm < 0 or self.weight_decay < 0:
            raise ConfigError("optim.warmup_steps, optim.clip_norm and optim.weight_decay must be >= 0")
        if not (0 <= self.momentum < 1 and 0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ConfigError(f"optim.momentum, optim.b1 and optim.b2 must lie in [0, 1), got {self.momentum}, "
                              f"{self.b1}, {self.b2}")
        if self.eps <= 0 or self.decay_factor <= 0:
            raise ConfigError(f"optim.eps and optim.decay_factor must be > 0, got {self.eps}, {self.decay_factor}")
        if any(d <= 0 for d in self.decay_steps):
            raise ConfigError(f"optim.decay_steps must be > 0 (fractions of the run < 1, or steps), got "
                              f"{self.decay_steps}")


@dataclasses.dataclass(frozen=True)
class TrainBackboneConfig:
    """Supervised training of a classification backbone (``jinterp train-backbone``).

    ``steps`` > 0 fixes the run length; otherwise it is ``epochs`` x (train size // batch_size).
    ``widths`` sets the channel widths of ``convnet``'s conv blocks (empty: its default); other archs
    ignore it, so that ``--config tiny --arch resnet20`` works.
    ``data`` is a ``jinterp.data.load`` spec (``synthparts``, ``cifar10:PATH``, ...); for synthparts,
    ``image_size``, ``train_size`` and ``test_size`` (0: the generator's defaults) pick the generated data,
    other sources keep their own sizes. ``num_classes`` 0 means "from the data set". ``weights`` optionally
    starts from a saved variables file (fine-tuning). ``augment``: ``none`` | ``flip`` | ``flip_crop`` (random
    horizontal flip + random crop after ``crop_pad`` pixels of zero padding, as for CIFAR). ``normalization``:
    ``arch`` (the backbone's own scheme, ``jinterp.backbones.NORMALIZATION``) or a preset name of
    ``jinterp.data.NORMALIZATIONS``. Intervals are in steps; 0 disables. ``eval_every`` evaluates on the test
    split; ``log_every`` also bounds how late a NaN loss is noticed.
    """

    arch: str = "convnet"
    widths: tuple[int, ...] = ()
    data: str = "synthparts"
    weights: str = ""
    num_classes: int = 0
    image_size: int = 64
    batch_size: int = 128
    steps: int = 0
    epochs: float = 30.0
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    augment: typing.Literal["none", "flip", "flip_crop"] = "flip_crop"
    crop_pad: int = 4
    normalization: str = "arch"
    label_smoothing: float = 0.0
    bf16: bool = False
    train_size: int = 0
    test_size: int = 0
    log_every: int = 50
    eval_every: int = 500
    ckpt_every: int = 500
    keep: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        check_field_types(self)

    @classmethod
    def paper(cls) -> TrainBackboneConfig:
        """The CIFAR ResNet recipe of He et al. 2016 as trained by akamaster/pytorch_resnet_cifar10 (the
        source of the shared ResNet-20): SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 200 epochs,
        lr x0.1 at 50 % and 75 % of the run, random flip + 4-px crop."""
        return cls(epochs=200.0, batch_size=128, augment="flip_crop", crop_pad=4,
                   optim=OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step",
                                     decay_steps=(0.5, 0.75), decay_factor=0.1))

    @classmethod
    def tiny(cls) -> TrainBackboneConfig:
        """A slim convnet on synthparts 64 px: >= 90 % test accuracy in a few minutes on a 2-core CPU
        (96 % after 300 steps in the issue note's measurement). ``widths`` applies to convnet only."""
        return cls(
            arch="convnet",
            widths=(16, 32, 64, 64),
            batch_size=64,
            steps=300,
            train_size=6000,
            test_size=1000,
            optim=OptimConfig(name="adam", lr=3e-3, weight_decay=0.0, warmup_steps=50),
            augment="flip",
            log_every=25,
            eval_every=100,
            ckpt_every=100,
            keep=2,
        )

    def validate(self) -> None:
        self.optim.validate()
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be > 0, got {self.batch_size}")
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs <= 0):
            raise ConfigError("set steps > 0 or epochs > 0")
        for name in ("log_every", "eval_every", "ckpt_every", "keep", "num_classes", "train_size", "test_size",
                     "crop_pad"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {self.image_size}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not self.arch or not self.data:
            raise ConfigError("arch and data must not be empty (e.g. arch=convnet, data=synthparts)")
        if any(w < 1 for w in self.widths):
            raise ConfigError(f"widths must be positive channel counts, got {self.widths}")


PRESETS = ("paper", "tiny")


def preset(cls: type[C], name: str) -> C:
    """``cls.paper()`` / ``cls.tiny()`` by name; unknown names raise ConfigError."""
    if name not in PRESETS or not hasattr(cls, name):
        raise ConfigError(f"unknown config preset {name!r} for {cls.__name__}; choose one of {list(PRESETS)}")
    return getattr(cls, name)()
