"""Localization maps scored against object masks (spec B.5.3): GradMap per filter, CAM, ActivMap per filter.

Everything takes the ungated network as ``apply(x) -> (logits, A)`` on *normalized* inputs ``x`` (N, H, W, 3)
with ``A`` the gated layer's map (N, h, w, K), and binary object masks (N, H, W). All of it is vectorized: no
loop over images or filters (the released ActivMap loops over images x 2048 channels in Python).

* GradMap: per class, the ``n_top`` filters with the largest mean spatial sum over that class's images; per
  image, the gradient of each of its class's filters' spatial mean w.r.t. the input (one ``vjp`` per batch,
  ``vmap`` over the ``n_top`` cotangents); L2 over colour, divide by the RMS over pixels, Gaussian blur
  (``sigma``, odd ``kernel``, reflect border like kornia), binarize ``> threshold``; IoU averaged over the
  filters = the image's IoU; "AP@20" = fraction of images with IoU >= ``success``.
* CAM: ``sum_k W[k, y] A_k`` with the true class's head weights, bilinear upsampling (half-pixel centres =
  PyTorch ``align_corners=False``), top ``fraction`` of pixels (the value at sorted position -floor(f*H*W)),
  IoU; AP = fraction with IoU > ``success``.
* ActivMap: per-filter thresholds at the top ``fraction`` of all that filter's activations (pooled over
  positions and images), upsample, binarize ``>= T_k``, IoU per image and filter; per (filter, class) mean IoU
  and success rate (IoU > ``success``); a filter's score is its best class's success rate ("related class").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.errors import DataError, ShapeError

Apply = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def object_masks(ds) -> np.ndarray:
    """The ground truth the protocols score against: ``(N, H, W)`` bool, the object of each image's class.

    CSG's released VOC Part data holds one object per crop and scores against that object's mask (spec B.5.3);
    on a whole image with several objects the mask is the pixels of the objects of the image's class (its label):

    * ``voc:`` — the union of the boxes (``meta["objects"]``, output pixels, all of them: difficult ones too) whose
      class is the image's class, rasterised at the output size as the reader rasterises ``masks["object"]`` (rows
      ``floor(y0)`` to ``ceil(y1)``); from the boxes rather than ``masks["object"]``, where a smaller box of
      another class drawn later covers part of the object. With ``crop=box`` the image is the object's box, so the
      mask is (nearly) the whole image: VOC has boxes, not masks [reconstructed: the paper scores against
      Pascal-Part masks].
    * ``pascal_part:`` — ``masks["object"] == class_ind`` of the image's class (Pascal-Part's object masks).
    * anything else (synthparts, npz...) — ``masks["object"] > 0``.

    ``ds.meta`` is the reader's (``Dataset.take`` keeps it whole), so call this on the loaded split and index the
    result like the images.
    """
    from jinterp.data.voc import VOC_CLASSES

    if "object" not in ds.masks:
        raise DataError(f"{ds.name or 'the data set'} has no object masks; CSG's localization needs masks['object'] "
                        "(synthparts, voc:PATH, pascal_part:PATH)")
    masks = np.asarray(ds.masks["object"])
    kind = ds.name.split(":", 1)[0]
    if kind not in ("voc", "pascal_part"):
        return masks > 0
    code = np.asarray([VOC_CLASSES.index(ds.class_names[int(y)]) for y in ds.labels])  # 0..19, VOC order
    if kind == "pascal_part":
        return masks == (code + 1)[:, None, None]
    objects = ds.meta["objects"]
    if len(objects) != len(ds):
        raise DataError(f"{ds.name}: meta['objects'] lists {len(objects)} images but the data set holds {len(ds)}; "
                        "call object_masks on the split as loaded, then index it like the images")
    out = np.zeros(masks.shape, bool)
    for i, (objs, c) in enumerate(zip(objects, code, strict=True)):
        for cls, _difficult, x0, y0, x1, y1 in objs:
            if int(cls) == c:
                out[i, max(int(np.floor(y0)), 0):max(int(np.ceil(y1)), 0),
                    max(int(np.floor(x0)), 0):max(int(np.ceil(x1)), 0)] = True
    return out


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear (N, h, w, K) -> (N, H, W, K), PyTorch ``interpolate(..., align_corners=False)`` for upsampling."""
    return jax.image.resize(maps, (maps.shape[0], *size, maps.shape[-1]), "bilinear", antialias=False)


def iou(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """IoU of boolean masks over the last two axes (..., H, W); 0 where the union is empty."""
    inter = jnp.sum(pred & gt, axis=(-2, -1))
    union = jnp.sum(pred | gt, axis=(-2, -1))
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0)


def gaussian_kernel1d(kernel: int, sigma: float) -> np.ndarray:
    x = np.arange(kernel, dtype=np.float64) - (kernel - 1) / 2
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(maps: jax.Array, kernel: int, sigma: float) -> jax.Array:
    """Separable Gaussian blur of (..., H, W) maps with reflect padding (kornia ``GaussianBlur2d`` default)."""
    pad = kernel // 2
    if pad >= min(maps.shape[-2:]):
        raise ShapeError(f"blur kernel {kernel} needs maps larger than {pad} px, got {maps.shape[-2:]}; lower "
                         "grad_blur_kernel")
    k = jnp.asarray(gaussian_kernel1d(kernel, sigma))
    lead = maps.shape[:-2]
    x = maps.reshape((-1, *maps.shape[-2:]))
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    h, w = maps.shape[-2:]
    x = sum(k[i] * x[:, i:i + h, :] for i in range(kernel))
    x = sum(k[i] * x[:, :, i:i + w] for i in range(kernel))
    return x.reshape((*lead, h, w))


def top_channels(pooled_sum: jax.Array, labels: jax.Array, num_classes: int, n_top: int) -> jax.Array:
    """(C, n_top) filters with the largest mean spatial sum over each class's images; ``pooled_sum`` (N, K)."""
    onehot = jax.nn.one_hot(labels, num_classes)                    # (N, C)
    mean = onehot.T @ pooled_sum / jnp.maximum(onehot.sum(0)[:, None], 1)
    return jax.lax.top_k(mean, min(n_top, pooled_sum.shape[1]))[1]


def process_gradmap(grad: jax.Array, kernel: int, sigma: float, threshold: float) -> jax.Array:
    """(..., H, W, 3) input gradients -> boolean maps (..., H, W) (released ``proc_gradmap``)."""
    m = jnp.sqrt(jnp.sum(grad * grad, axis=-1))
    rms = jnp.sqrt(jnp.mean(m * m, axis=(-2, -1), keepdims=True))
    m = m / jnp.maximum(rms, 1e-30)
    return gaussian_blur(m, kernel, sigma) > threshold


def gradmap_iou(apply: Apply, x: jax.Array, gt: jax.Array, channels: jax.Array, kernel: int, sigma: float,
                threshold: float) -> jax.Array:
    """Per-image IoU (N,) averaged over ``channels`` (N, n) of each image (one batch; jit it)."""

    def pooled(xb):
        return apply(xb)[1].mean(axis=(1, 2))                        # (N, K)

    out, vjp = jax.vjp(pooled, x)

    def one(ch):                                                      # ch: (N,) a filter per image
        (g,) = vjp(jax.nn.one_hot(ch, out.shape[1], dtype=out.dtype))
        return iou(process_gradmap(g, kernel, sigma, threshold), gt)

    return jax.vmap(one, in_axes=1)(channels).mean(axis=0)


def cam_iou(a: jax.Array, fc_kernel: jax.Array, labels: jax.Array, gt: jax.Array, fraction: float) -> jax.Array:
    """CAM of the true class, upsampled, top ``fraction`` of pixels vs ``gt``: per-image IoU (N,)."""
    w = jnp.take(fc_kernel.T, labels, axis=0)                         # (N, K): W[:, y]
    cam = jnp.einsum("nhwk,nk->nhw", a, w)
    h, w_ = gt.shape[-2:]
    cam = upsample(cam[..., None], (h, w_))[..., 0]
    n = max(1, int(math.floor(fraction * h * w_)))
    thr = jnp.sort(cam.reshape(cam.shape[0], -1), axis=1)[:, -n]
    return iou(cam >= thr[:, None, None], gt)


def activ_thresholds(a_all: jax.Array, fraction: float) -> jax.Array:
    """T_k: the value at sorted position -floor(f * h * w * N) of filter k's activations; ``a_all`` (N, h, w, K)."""
    flat = a_all.reshape(-1, a_all.shape[-1])
    n = max(1, int(math.floor(fraction * flat.shape[0])))
    return jnp.sort(flat, axis=0)[-n]


def activmap_iou(a: jax.Array, thresholds: jax.Array, gt: jax.Array) -> jax.Array:
    """IoU (N, K) of every filter's upsampled map binarized at ``>= T_k`` with the object mask."""
    up = upsample(a, gt.shape[-2:]) >= thresholds
    inter = jnp.einsum("nhwk,nhw->nk", up.astype(jnp.float32), gt.astype(jnp.float32))
    union = up.sum((1, 2)) + gt.sum((1, 2))[:, None] - inter
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0)


def activmap_summary(ious: np.ndarray, labels: np.ndarray, num_classes: int, success: float) -> dict:
    """Per filter: related class (best success rate), its score and mean IoU; per class: RFN, mean IoU, mean
    score; totals weighted by RFN (= means over all filters)."""
    onehot = np.eye(num_classes)[labels]                              # (N, C)
    cnt = np.maximum(onehot.sum(0), 1)
    mean_iou = (onehot.T @ ious) / cnt[:, None]                       # (C, K)
    succ = (onehot.T @ (ious > success)) / cnt[:, None]
    related = succ.argmax(0)
    k = np.arange(ious.shape[1])
    score, fiou = succ[related, k], mean_iou[related, k]
    per_class = {}
    for c in range(num_classes):
        sel = related == c
        per_class[c] = {"rfn": int(sel.sum()), "iou": float(fiou[sel].mean()) if sel.any() else 0.0,
                        "ap": float(score[sel].mean()) if sel.any() else 0.0}
    return {"iou": float(fiou.mean()), "ap": float(score.mean()), "related_class": related.tolist(),
            "per_class": per_class}


def evaluate(apply: Apply, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, num_classes: int, *,
             fc_kernel: jax.Array | None, normalize: Callable[[jax.Array], jax.Array], batch_size: int = 64,
             n_top: int = 30, blur_kernel: int = 61, blur_sigma: float = 30.0, grad_threshold: float = 1.0,
             grad_success: float = 0.2, cam_fraction: float = 0.3, cam_success: float = 0.3,
             activ_fraction: float = 0.3, activ_success: float = 0.3) -> dict:
    """The three protocols on uint8 ``images`` (N, H, W, C), binary object ``masks`` (N, H, W), ``labels``.

    Returns host floats and the per-image CAM/GradMap IoUs (for figures). ``fc_kernel`` (K, C) enables CAM
    (GAP + linear heads only). Batches are padded to ``batch_size`` (one compile).
    """
    n = images.shape[0]
    masks = np.asarray(masks).astype(bool)
    labels = np.asarray(labels).astype(np.int32)
    nb = -(-n // batch_size)
    pad = nb * batch_size - n

    def padded(a):
        return np.concatenate([a, np.repeat(a[:1], pad, 0)]) if pad else a

    ims, gts, ys = padded(images), padded(masks), padded(labels)

    @jax.jit
    def feats(xb):
        return apply(normalize(xb))[1]

    a_all = jnp.concatenate([feats(jnp.asarray(ims[i * batch_size:(i + 1) * batch_size])) for i in range(nb)])[:n]
    channels = top_channels(a_all.sum((1, 2)), jnp.asarray(labels), num_classes, n_top)
    thresholds = activ_thresholds(a_all, activ_fraction)

    grad_fn = jax.jit(functools.partial(_grad_batch, apply, normalize, blur_kernel, blur_sigma, grad_threshold))
    act_fn = jax.jit(activmap_iou)
    cam_fn = jax.jit(cam_iou, static_argnums=4)
    g_iou, a_iou, c_iou = [], [], []
    for i in range(nb):
        sl = slice(i * batch_size, (i + 1) * batch_size)
        xb, gb, yb = jnp.asarray(ims[sl]), jnp.asarray(gts[sl]), jnp.asarray(ys[sl])
        g_iou.append(grad_fn(xb, gb, channels[yb]))
        ab = a_all[min(i * batch_size, n):(i + 1) * batch_size]
        if ab.shape[0] < batch_size:  # the padded tail
            ab = jnp.concatenate([ab, jnp.repeat(ab[:1], batch_size - ab.shape[0], 0)])
        a_iou.append(act_fn(ab, thresholds, gb))
        if fc_kernel is not None:
            c_iou.append(cam_fn(ab, fc_kernel, yb, gb, cam_fraction))
    g_iou = np.asarray(jnp.concatenate(g_iou))[:n]
    a_iou = np.asarray(jnp.concatenate(a_iou))[:n]
    out = {"gradmap": _per_class(g_iou, labels, num_classes, grad_success, ">="),
           "activmap": activmap_summary(a_iou, labels, num_classes, activ_success),
           "gradmap_image_iou": g_iou}
    if fc_kernel is not None:
        c_iou = np.asarray(jnp.concatenate(c_iou))[:n]
        out["cam"] = _per_class(c_iou, labels, num_classes, cam_success, ">")
        out["cam_image_iou"] = c_iou
    return out


def _grad_batch(apply, normalize, kernel, sigma, threshold, xb, gb, ch):
    return gradmap_iou(apply, normalize(xb), gb, ch, kernel, sigma, threshold)


def _per_class(ious: np.ndarray, labels: np.ndarray, num_classes: int, success: float, op: str) -> dict:
    ok = ious >= success if op == ">=" else ious > success
    per = {c: {"iou": float(ious[labels == c].mean()) if (labels == c).any() else 0.0,
               "ap": float(ok[labels == c].mean()) if (labels == c).any() else 0.0} for c in range(num_classes)}
    return {"iou": float(ious.mean()), "ap": float(ok.mean()), "per_class": per}


def cam_maps(a: jax.Array, fc_kernel: jax.Array, labels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Upsampled CAMs of the true class (N, H, W) (for figures)."""
    cam = jnp.einsum("nhwk,nk->nhw", a, jnp.take(fc_kernel.T, labels, axis=0))
    return upsample(cam[..., None], size)[..., 0]


def gradmap_maps(apply: Apply, x: jax.Array, channel: jax.Array, kernel: int, sigma: float) -> jax.Array:
    """Blurred, RMS-normalized input-gradient maps (N, H, W) of one filter per image (before the threshold)."""
    out, vjp = jax.vjp(lambda xb: apply(xb)[1].mean(axis=(1, 2)), x)
    (g,) = vjp(jax.nn.one_hot(channel, out.shape[1], dtype=out.dtype))
    m = jnp.sqrt(jnp.sum(g * g, axis=-1))
    m = m / jnp.maximum(jnp.sqrt(jnp.mean(m * m, axis=(-2, -1), keepdims=True)), 1e-30)
    return gaussian_blur(m, kernel, sigma)
