"""jinterp.data: readers into one in-memory :class:`Dataset`, the synthparts generator, and the input pipeline.

    ds = jinterp.data.load("synthparts:size=64,n_train=2000")        # or cifar10:PATH, npz:PATH, broden:PATH ...
    cub = jinterp.data.load("cub:PATH:crop=box,size=224", "train")   # voc:, pascal_part:, broden:PATH:lazy=1 ...
    it = jinterp.data.BatchIterator(ds, 128, seed=0, mesh=jinterp.data.data_mesh(), masks=("part",))
    batch = next(it)                                                   # uint8 images, sharded over "data"
    x = jinterp.data.preprocess(batch, key, normalization="imagenet", flip=True)["image"]  # in the jitted step
    pos = it.position()                                                # resume: BatchIterator(..., position=pos)
"""

from jinterp.data.broden import broden_concepts
from jinterp.data.cub import read_cub
from jinterp.data.dataset import Dataset
from jinterp.data.pipeline import (
    NORMALIZATIONS,
    BatchIterator,
    Position,
    augment,
    batches,
    data_mesh,
    epoch_permutation,
    normalize,
    preprocess,
)
from jinterp.data.readers import (
    load,
    read_broden,
    read_cifar,
    read_folder,
    read_idx,
    read_mnist,
    read_npz,
    read_tfds,
    synthparts_dataset,
    with_synthparts_defaults,
)
from jinterp.data.spec import split_spec
from jinterp.data.synthparts import SynthPartsConfig, generate
from jinterp.data.voc import read_pascal_part, read_voc

__all__ = [
    "NORMALIZATIONS", "BatchIterator", "Dataset", "broden_concepts", "read_cub", "read_pascal_part", "read_voc",
    "split_spec", "Position", "SynthPartsConfig", "augment", "batches",
    "data_mesh", "epoch_permutation", "generate", "load", "normalize", "prepare_synthparts", "preprocess",
    "read_broden", "read_cifar", "read_folder", "read_idx", "read_mnist", "read_npz", "read_tfds",
    "synthparts_dataset", "with_synthparts_defaults",
]


def prepare_synthparts(*args, **kw):
    """Writes synthparts as a TFDS array_record data set; see :func:`jinterp.data.synthparts_tfds.prepare_synthparts`.

    Imported lazily: the TFDS builder module imports tensorflow_datasets, which is slow to import.
    """
    from jinterp._extras import require_tfds

    require_tfds("prepare_synthparts")  # before importing the builder module, which imports tensorflow_datasets
    from jinterp.data.synthparts_tfds import prepare_synthparts as _prepare

    return _prepare(*args, **kw)
