"""Figures of the explanatory graph: top image patches per node and a node's inferred positions across images
(as the released ``showPatch.m``: nodes ranked by the sum of their largest scores, patches cut around x2p(p̂))."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jinterp.report.figures._common import image_grid, plt, save, to_display


def rank_nodes(layer, top_k: int = 50) -> np.ndarray:
    """Flat node indices sorted by the sum of each node's ``top_k`` largest scores (descending)."""
    s = layer.scores()
    k = min(top_k, s.shape[0])
    return np.argsort(-np.sort(s, axis=0)[-k:].sum(0), kind="stable")


def patch(image: np.ndarray, xy, side: int) -> np.ndarray:
    """A ``side``×``side`` patch of an (H, W, C) image centered at pixel (x, y), zero-padded at the border."""
    h, w = image.shape[:2]
    x0, y0 = int(round(xy[0] - side / 2)), int(round(xy[1] - side / 2))
    out = np.zeros((side, side) + image.shape[2:], image.dtype)
    ys, xs = slice(max(0, y0), min(h, y0 + side)), slice(max(0, x0), min(w, x0 + side))
    out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = image[ys, xs]
    return out


def node_patches(images: np.ndarray, layer, *, num_nodes: int = 8, top_images: int = 5, side: int | None = None):
    """Rows = the ``num_nodes`` best nodes of a layer, columns = patches of their top-scoring images."""
    side = side or max(8, int(round(0.35 * images.shape[1])))
    xy, s = layer.positions_px(), layer.scores()
    rows, labels = [], []
    for v in rank_nodes(layer)[:num_nodes]:
        best = np.argsort(-s[:, v], kind="stable")[:top_images]
        rows.append([patch(images[i], xy[i, v], side) for i in best])
        c, k = divmod(int(v), layer.geom.k)
        labels.append(f"f{c} n{k}")
    return image_grid(rows, labels, [f"#{j + 1}" for j in range(top_images)],
                      title=f"{layer.name}: top image patches per node")


def node_positions(images: np.ndarray, layer, node: int, landmarks=None, visible=None, *, num_images: int = 8):
    """One node's inferred position (white cross) on its top images, with the part landmarks (colored dots)."""
    xy, s = layer.positions_px(), layer.scores()
    best = np.argsort(-s[:, node], kind="stable")[:num_images]
    fig, axes = plt.subplots(1, len(best), figsize=(1.6 * len(best), 1.9), squeeze=False)
    colors = plt.cm.tab10(np.arange(10))
    for ax, i in zip(axes[0], best, strict=False):
        ax.imshow(to_display(images[i]), interpolation="nearest")
        ax.plot(xy[i, node, 0] - 0.5, xy[i, node, 1] - 0.5, "x", color="white", ms=9, mew=2.5)
        ax.plot(xy[i, node, 0] - 0.5, xy[i, node, 1] - 0.5, "x", color="black", ms=7, mew=1.2)
        if landmarks is not None:
            for p in range(landmarks.shape[1]):
                if visible[i, p]:
                    ax.plot(landmarks[i, p, 0] - 0.5, landmarks[i, p, 1] - 0.5, "o", color=colors[p % 10], ms=4)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"img {i}", fontsize=7)
    c, k = divmod(int(node), layer.geom.k)
    fig.suptitle(f"{layer.name} node f{c} n{k}: inferred positions (x) and part centers (dots)", fontsize=8)
    fig.tight_layout()
    return fig


def save_all(folder, images, layers, landmarks=None, visible=None) -> dict[str, str]:
    """Patch grids for every layer and the position strip of the best node of the bottom and top layers."""
    folder = Path(folder)
    out = {}
    for ly in layers:
        out[f"patches_{ly.name}"] = str(save(node_patches(images, ly), folder / f"graph_patches_{ly.name}.png"))
    for ly in {id(x): x for x in (layers[0], layers[-1])}.values():
        best = int(rank_nodes(ly)[0])
        out[f"positions_{ly.name}"] = str(save(node_positions(images, ly, best, landmarks, visible),
                                               folder / f"graph_positions_{ly.name}.png"))
    return out
