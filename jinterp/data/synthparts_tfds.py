"""synthparts as a TFDS data set (array_record), written and read without TensorFlow.

    prepare_synthparts(data_dir, size=64, n_train=10000, n_test=2000)    # writes data_dir/synthparts/size64/...
    ds = jinterp.data.load(f"tfds:synthparts/size64:{data_dir}", "test")  # or tfds.data_source(...)

Every feature is a ``tfds.features.Tensor``: ``image`` uint8 (S, S, 3), ``label`` int32, the label maps
``object``/``part``/``color``/``slot`` uint8 (S, S) (zlib-compressed: they are mostly zeros), ``texture`` int32,
``landmarks`` float32 (P, 2), ``landmark_visible`` bool (P,). Class and concept names are stored in the
data set's metadata (``info.metadata["class_names"]``, ``["concepts"]``). The bytes are exactly those of
:func:`jinterp.data.synthparts.generate` for the same seed and config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jinterp.data import synthparts as sp
from jinterp.errors import ConfigError

_MAPS = ("object", "part", "color", "slot")


@dataclasses.dataclass(kw_only=True)
class SynthPartsBuilderConfig(tfds.core.BuilderConfig):
    """Image size, split sizes, seed and difficulty preset of a prepared synthparts set."""

    size: int = 64
    n_train: int = 10000
    n_test: int = 2000
    seed: int = 0
    preset: str = "default"

    def synth_config(self) -> sp.SynthPartsConfig:
        if self.preset not in ("easy", "default", "hard", "rigid", "articulated"):
            raise ConfigError(f"synthparts preset {self.preset!r} unknown; use easy, default, hard, rigid or "
                              "articulated")
        return getattr(sp.SynthPartsConfig, self.preset)(size=self.size)


def _config(size: int, **kw) -> SynthPartsBuilderConfig:
    return SynthPartsBuilderConfig(name=f"size{size}", description=f"synthparts at {size}x{size}", size=size, **kw)


class SynthParts(tfds.core.GeneratorBasedBuilder):
    """synthparts: one object of K part-based categories per image, with part/color/texture/landmark labels."""

    name = "synthparts"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [_config(64), _config(128)]
    # TFDS derives code_path with `importlib_resources`, which the pinned environment lacks (an etils[epath]
    # extra); this module's path is what it would compute.
    code_path = epath.Path(__file__)

    def __init__(self, *, n_train: int | None = None, n_test: int | None = None, seed: int | None = None,
                 preset: str | None = None, **kw):
        # Generation settings other than the size are builder arguments, not configs: TFDS forbids a custom
        # config named like a registered one, and readers need only the registered name ("synthparts/size64").
        # (Set before super().__init__, which already calls _info.)
        self._overrides = dict(n_train=n_train, n_test=n_test, seed=seed, preset=preset)
        super().__init__(**kw)

    @property
    def _gen(self) -> dict:
        c = self.builder_config
        return {k: getattr(c, k) if v is None else v for k, v in self._overrides.items()}

    def _synth_config(self) -> sp.SynthPartsConfig:
        return dataclasses.replace(self.builder_config, preset=self._gen["preset"]).synth_config()

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self._synth_config()
        s, p = cfg.size, sp.NUM_SLOTS
        maps = {k: tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)
                for k in _MAPS}
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
            "label": tfds.features.Tensor(shape=(), dtype=np.int32),
            **maps,
            "texture": tfds.features.Tensor(shape=(), dtype=np.int32),
            "landmarks": tfds.features.Tensor(shape=(p, 2), dtype=np.float32),
            "landmark_visible": tfds.features.Tensor(shape=(p,), dtype=np.bool_),
        })
        metadata = tfds.core.MetadataDict(
            class_names=list(cfg.class_names),
            concepts={k: list(v) for k, v in sp.concepts(cfg).items()},
            seed=self._gen["seed"], preset=self._gen["preset"],
        )
        return self.dataset_info_from_configs(features=features, supervised_keys=("image", "label"),
                                              metadata=metadata, description=sp.__doc__.split("\n\n")[0],
                                              disable_shuffling=True)  # record i = image i of the seed

    def _split_generators(self, dl_manager):
        g = self._gen
        return {"train": self._generate_examples("train", g["n_train"]),
                "test": self._generate_examples("test", g["n_test"])}

    def _generate_examples(self, split: str, n: int, chunk: int = 512):
        cfg = self._synth_config()
        for start in range(0, n, chunk):
            d = sp.generate(min(chunk, n - start), seed=self._gen["seed"], start=start, split=split, config=cfg)
            for i in range(len(d["label"])):  # TFDS serializes one example at a time
                yield start + i, {k: d[k][i] for k in ("image", "label", *_MAPS, "texture", "landmarks",
                                                       "landmark_visible")}


def prepare_synthparts(data_dir: str | Path, size: int = 64, n_train: int = 10000, n_test: int = 2000, *,
                       seed: int = 0, preset: str = "default") -> tfds.core.DatasetBuilder:
    """Generates synthparts and writes it as array_record under ``data_dir/synthparts/size{size}/1.0.0``.

    Readable afterwards with ``tfds.data_source("synthparts/size{size}", data_dir=data_dir)`` or
    ``jinterp.data.load("tfds:synthparts/size{size}:DATA_DIR")``. Overwrites nothing: if that folder already
    holds a prepared copy it is reused as is (delete it to regenerate with other counts).
    """
    if n_train < 1 or n_test < 1:
        raise ConfigError(f"prepare_synthparts: n_train and n_test must be >= 1, got {n_train}, {n_test}")
    if size not in (64, 128):
        raise ConfigError(f"prepare_synthparts: size must be 64 or 128 (the registered configs), got {size}; "
                          "other sizes: jinterp.data.load('synthparts:size=...') generates them in memory")
    builder = SynthParts(config=f"size{size}", data_dir=str(data_dir), file_format="array_record",
                         n_train=n_train, n_test=n_test, seed=seed, preset=preset)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False, verify_ssl=False))
    return builder
