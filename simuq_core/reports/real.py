"""The figure of a prediction on a real acquisition: raw frame, widefield, classical SIM and the
network's maps side by side, zoomed on one window, with each image's power spectrum.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simuq_core.evaluation.gtfree import log_spectrum

__all__ = ['plot_real_walkthrough']


def plot_real_walkthrough(path: str | os.PathLike, panels: Sequence[tuple[str, np.ndarray]],
                          zoom: tuple[int, int, int], title: str, pixel_nm: float,
                          circles: Sequence[tuple[str, float]] = ()) -> Path:
    """Full field (top row), a zoom (middle row, the box ``(y0, x0, size)`` in model px, drawn on
    the top row) and the full field's power spectrum (bottom row, :func:`log_spectrum`) of each
    ``(title, (rH, rW) image)`` panel; 1-99 % contrast per panel, the std map in its own colour
    map. ``pixel_nm``: model-grid pixel, for the scale bar (1 µm). ``circles``: ``(label, radius in
    cycles per model px)`` drawn on the spectra (e.g. the widefield cut-off and the SIM limit)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Rectangle

    from simuq_core.reports.plots import save_figure

    n = len(panels)
    fig = Figure(figsize=(3.2 * n, 9.9), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    styles = ("tab:orange", "tab:cyan", "tab:pink")
    for j, (name, image) in enumerate(panels):
        spec = log_spectrum(image)
        lo, hi = np.percentile(spec, [5.0, 99.9])
        h, w = spec.shape
        ax = axes[2, j]
        ax.imshow(spec, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
        for (label, radius), colour in zip(circles, styles, strict=False):
            ax.add_patch(Circle((w // 2, h // 2), radius * w, fill=False, color=colour, lw=0.8, ls="--",
                                label=label))
        ax.set_title(f"{name}: power spectrum", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if circles and j == 0:
            ax.legend(loc="lower left", fontsize=6, framealpha=0.6)
    y0, x0, size = zoom
    bar_px = 1000.0 / pixel_nm
    for j, (name, image) in enumerate(panels):
        lo, hi = np.percentile(image, [1.0, 99.0])
        cmap = "viridis" if "std" in name else "gray"
        for i, (img, label) in enumerate(((image, name), (image[y0:y0 + size, x0:x0 + size], "zoom"))):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(label if i == 0 else f"{name}: zoom", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), size, size, fill=False, color="tab:orange"))
            length = bar_px if i == 0 else bar_px / 4
            h, w = img.shape
            ax.plot([w * 0.95 - length, w * 0.95], [h * 0.94] * 2, color="white", lw=2.5)
        axes[1, j].text(0.02, 0.04, "250 nm", color="white", fontsize=7, transform=axes[1, j].transAxes)
    axes[0, 0].text(0.02, 0.04, "1 µm", color="white", fontsize=7, transform=axes[0, 0].transAxes)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
