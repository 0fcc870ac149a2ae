"""Figures of class-specific gate training: the gate matrix, localization maps, training curves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jinterp.report.figures._common import image_grid, plt


def sort_filters(gate: np.ndarray) -> np.ndarray:
    """Filter order for display: by the class of each filter's largest gate, then by that gate (descending)."""
    gate = np.asarray(gate)
    cls = gate.argmax(1)
    return np.lexsort((-gate.max(1), cls))


def gate_matrix(gate: np.ndarray, class_names: Sequence[str], *, head_csg: np.ndarray | None = None,
                head_std: np.ndarray | None = None, title: str = "class-specific gate G") -> plt.Figure:
    """G (classes x filters, filters sorted by class), and when given the head weights W (K, C) of the CSG
    and standard models in the same filter order, and G * W."""
    gate = np.asarray(gate)
    order = sort_filters(gate)
    panels = [("G (sorted filters)", gate[order].T, "viridis", (0.0, 1.0))]
    if head_csg is not None:
        w = np.asarray(head_csg)[order].T
        panels.append(("W (CSG head)", w, "coolwarm", None))
        panels.append(("G * W", gate[order].T * w, "coolwarm", None))
    if head_std is not None:
        panels.append(("W (standard head, own filters)", np.asarray(head_std)[sort_filters(np.abs(head_std))].T,
                       "coolwarm", None))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, gate.shape[0] / 10), 1.1 * len(panels) + 0.3 *
                                                          len(panels) * len(class_names) / 3), squeeze=False)
    for ax, (name, m, cmap, lim) in zip(axes[:, 0], panels, strict=True):
        if lim is None:
            v = float(np.abs(m).max()) or 1.0
            lim = (-v, v)
        im = ax.imshow(m, aspect="auto", cmap=cmap, vmin=lim[0], vmax=lim[1], interpolation="nearest")
        ax.set_yticks(range(len(class_names)))
        ax.set_yticklabels(class_names, fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("filter", fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.02)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def localization_maps(images: np.ndarray, masks: np.ndarray, maps: dict[str, np.ndarray],
                      titles: Sequence[str] | None = None) -> plt.Figure:
    """One row per image: the image, its object mask, then each named map (e.g. CAM of CSG / standard)."""
    rows = []
    for i in range(images.shape[0]):
        rows.append([images[i], masks[i].astype(np.float32)] + [np.asarray(m[i]) for m in maps.values()])
    return image_grid(rows, row_labels=list(titles) if titles is not None else None,
                      col_labels=["image", "object mask", *maps.keys()], cmap="magma")


def training_curves(records: dict[str, list[dict]], title: str = "CSG vs standard training") -> plt.Figure:
    """Test accuracy per epoch for each run, gated epochs shaded, and the gate density."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    for name, recs in records.items():
        ep = [r["epoch"] for r in recs]
        ax1.plot(ep, [r.get("test_accuracy", np.nan) for r in recs], marker=".", label=f"{name} test (ungated)")
        ax1.plot(ep, [r["train_accuracy"] for r in recs], ls=":", label=f"{name} train (own path)")
        for r in recs:
            if r["path"] == "csg":
                ax1.axvspan(r["epoch"] - 0.5, r["epoch"] + 0.5, color="orange", alpha=0.15, lw=0)
        if any(r["path"] == "csg" for r in recs):
            ax2.plot(ep, [r["density"] for r in recs], marker=".", label=f"{name} density")
    ax1.set_xlabel("epoch (shaded: gated)")
    ax1.set_ylabel("accuracy")
    ax1.legend(fontsize=6)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("||G||_1 / (K C)")
    ax2.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
