"""Peak host memory of streamed feature extraction and dissection, measured in a fresh process.

    python tests/reliability/reliability_memory.py --mode iter|cache|dissect --n N [--cache DIR]

Streams ``N`` synthparts images (64 px, generated chunk by chunk, never all at once) through a random-init slim
convnet and reads layer ``relu1`` (64 x 64 x 16 float32 = 256 KiB per image):

* ``iter``: :func:`jinterp.core.features.iter_features` over the chunks, reduced on the fly (a running mean);
* ``cache``: :func:`jinterp.core.features.extract` with ``cache_dir`` (features written to disk batch by batch;
  ``maxrss_after_extract_kib``), then one pass over the returned memory maps (whose pages count as file-backed
  RSS: ``rssanon_kib``/``rssfile_kib`` split it); the images themselves (12 KiB each, uint8) are one array;
* ``dissect``: :mod:`jinterp.metrics.dissection` on the streamed activations: exact top-quantile thresholds
  over the stream, then the tally chunk by chunk against that chunk's concept labels (the counters add up),
  IoU and unit labels at the end.

Prints one JSON line: the mode, N, per-image activation bytes, ``ru_maxrss`` after warm-up (imports, compile,
first chunk) and at the end, in KiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from any cwd

SIZE, CHUNK, BATCH, LAYER, WIDTHS = 64, 64, 32, "relu1", (16, 16, 16, 16)


def _maxrss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("iter", "cache", "dissect"), required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--cache", default="")
    args = p.parse_args(argv)

    import jax
    import numpy as np

    from jinterp import backbones
    from jinterp.core import features
    from jinterp.data import synthparts as sp
    from jinterp.metrics import dissection as dis

    cfg = sp.SynthPartsConfig(size=SIZE)
    model = backbones.create("convnet", widths=WIDTHS)
    variables = backbones.init(model, jax.random.key(0), (SIZE, SIZE, 3))
    per_image = SIZE * SIZE * WIDTHS[0] * 4

    def chunks(n):
        for start in range(0, n, CHUNK):
            yield sp.generate(min(CHUNK, n - start), start=start, seed=0, split="train", config=cfg)

    def acts(n):
        for c in chunks(n):
            for out in features.iter_features(model, variables, c["image"], [LAYER], BATCH, preprocess="unit"):
                yield out[LAYER]

    # warm-up: compile everything on one chunk, then take the baseline
    names = sp.concepts(cfg)

    def concept_set(c):
        return dis.concepts_from_label_maps({k: c[k] for k in ("object", "part", "color")},
                                            {"texture": c["texture"]},
                                            {k: names[k][1:] for k in ("object", "part", "color", "texture")})

    warm = next(chunks(CHUNK))
    w = next(features.iter_features(model, variables, warm["image"], [LAYER], BATCH, preprocess="unit"))[LAYER]
    if args.mode == "dissect":
        th = dis.quantile_thresholds([w], w.shape[0] * w.shape[1] * w.shape[2])
        dis.tally([w], concept_set({k: v[:BATCH] for k, v in warm.items()}), th, BATCH)
    base = _maxrss_kib()

    result: dict = {}
    if args.mode == "iter":
        total, count = 0.0, 0
        for a in acts(args.n):
            total += float(a.sum())
            count += len(a)
        result["mean_activation"] = total / (count * a[0].size)
    elif args.mode == "cache":
        images = np.concatenate([c["image"] for c in chunks(args.n)])
        out = features.extract(model, variables, images, [LAYER], BATCH, preprocess="unit", cache_dir=args.cache)
        result["maxrss_after_extract_kib"] = _maxrss_kib()
        m = out[LAYER]
        result["mean_activation"] = float(sum(float(m[i:i + BATCH].sum()) for i in range(0, len(m), BATCH))
                                          / m.size)
        result.update(_rss_split())  # reading the memory maps back maps file pages (page cache), not heap
    else:
        h, wd = w.shape[1:3]
        th = dis.quantile_thresholds(acts(args.n), args.n * h * wd)
        tally = None
        for c in chunks(args.n):
            cs = concept_set(c)
            part = dis.tally((a for _, a in _slices(c["image"], model, variables, features)), cs, th, BATCH)
            tally = part if tally is None else jax.tree.map(lambda x, y: x + y, tally, part)
        table = dis.iou(tally, cs)
        res = dis.label_units(table, th.dead)
        result.update(detectors=res.num_detectors, mean_best_iou=float(res.best_iou.mean()))
    print(json.dumps({"mode": args.mode, "n": args.n, "activation_bytes_per_image": per_image,
                      "maxrss_warm_kib": base, "maxrss_end_kib": _maxrss_kib(), **result}))
    return 0


def _rss_split() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0].lower() + "_kib"] = int(line.split()[1])
    return out


def _slices(images, model, variables, features):
    for i, out in enumerate(features.iter_features(model, variables, images, [LAYER], BATCH, preprocess="unit")):
        yield i, out[LAYER]


if __name__ == "__main__":
    sys.exit(main())
