"""``pattern.png`` beside every prediction: what the pattern estimate saw, the picture users of
classical SIM tools ask for first ("can you see the peaks in the FFT?").

One panel per angle: the power spectrum of the separated first-order band ``c₊`` (the frames of
that angle demodulated by their phase steps, ``c₊ = (1/P)·Σ_p D_p·e^{−2πip/P}``; the estimator's
own separation also removes the widefield leakage, which the picture does not need), the detected
carrier ``k`` marked, circles at the OTF cut-off and at ``|k|``; the title gives period,
orientation, detection z against its threshold and modulation; the figure's footer the
diagnosis.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_pattern", "write_pattern_figure"]


def _first_order_band(frames: np.ndarray, n_angles: int) -> np.ndarray:
    """``c₊`` ``(A, H, W)`` of angle-major frames ``(A·P, H, W)``."""
    f, h, w = frames.shape
    p = f // n_angles
    steps = np.exp(-2j * np.pi * np.arange(p) / p)[None, :, None, None]
    return (frames.reshape(n_angles, p, h, w) * steps).mean(axis=1)


def plot_pattern(path: str | os.PathLike, frames: np.ndarray, estimate: dict[str, Any], otf_cutoff: float,
                 message: str, title: str) -> Path:
    """The figure (module docstring) of frames ``(A·P, H, W)`` and an estimate as a prediction's
    ``summary.json`` records it (``k_cycles_per_px``, ``period_px``, ``orientation_deg``,
    ``quality_z``, ``threshold_z``, ``modulation``); ``otf_cutoff`` in cycles per camera pixel."""
    from matplotlib.figure import Figure

    from simuq_core.reports.plots import save_figure

    k = np.asarray(estimate["k_cycles_per_px"], np.float64)
    n_angles = len(k)
    bands = _first_order_band(np.asarray(frames, np.float64), n_angles)
    h, w = bands.shape[-2:]
    win = np.outer(np.hanning(h), np.hanning(w))
    fig = Figure(figsize=(3.6 * n_angles, 4.4))
    extent = (-0.5, 0.5, 0.5, -0.5)
    for a in range(n_angles):
        ax = fig.add_subplot(1, n_angles, a + 1)
        power = np.fft.fftshift(np.abs(np.fft.fft2(bands[a] * win)) ** 2)
        ax.imshow(np.log10(power + 1e-12), cmap="magma", extent=extent,
                  vmin=np.percentile(np.log10(power + 1e-12), 50), vmax=np.log10(power.max() + 1e-12))
        for radius, style in ((otf_cutoff, "w--"), (float(np.hypot(*k[a])), "c:")):
            t = np.linspace(0, 2 * np.pi, 200)
            ax.plot(radius * np.cos(t), radius * np.sin(t), style, lw=0.8)
        ax.plot([k[a, 1]], [k[a, 0]], "o", mfc="none", mec="lime", ms=12, mew=1.5)
        z, threshold = estimate["quality_z"][a], estimate["threshold_z"]
        ok = z >= threshold
        ax.set_title(f"angle {a}: {estimate['period_px'][a]:.3f} px, {estimate['orientation_deg'][a]:.1f}°\n"
                     f"z {z:.1f} ({'≥' if ok else '<'} {threshold:.1f}), m {estimate['modulation'][a]:.2f}",
                     fontsize=8, color="black" if ok else "red")
        ax.set_xlim(-0.5, 0.5)
        ax.set_ylim(0.5, -0.5)
        ax.set_xlabel("fx (cycles/px)", fontsize=7)
        ax.set_ylabel("fy (cycles/px)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(message, 40 * n_angles)[:4]), fontsize=6.5, va="bottom")
    fig.subplots_adjust(bottom=0.3, top=0.8, wspace=0.35)
    return save_figure(fig, path)


def write_pattern_figure(folder: str | os.PathLike, na: float, wavelength_nm: float) -> Path | None:
    """``folder/pattern.png`` for one predict output folder whose ``summary.json`` records a
    full-field pattern estimate (blind or the instrument's); ``None`` for the network's own.
    ``na`` / ``wavelength_nm``: the model's optics, for the OTF cut-off circle."""
    from simuq_core.reports.reference import load_prediction

    folder = Path(folder)
    summary, x, _ = load_prediction(folder)
    pattern = summary.get("pattern") or {}
    estimate = pattern.get("angle_major")
    if not estimate or "k_cycles_per_px" not in estimate:
        return None
    cutoff = 2.0 * na * summary["maps"]["rec"]["pixel_nm"] / wavelength_nm
    title = f"{Path(summary['input']).name}: {pattern.get('method', 'pattern estimate')}"
    return plot_pattern(folder / "pattern.png", x, estimate, cutoff, pattern.get("message", ""), title)
