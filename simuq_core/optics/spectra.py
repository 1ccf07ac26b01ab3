"""Small Fourier-grid helpers shared by the spectral checks (NumPy, unshifted FFT grids)."""

from __future__ import annotations

import numpy as np

__all__ = ["freq_radius", "hann_window", "periodic_hann_window"]


def freq_radius(shape: tuple[int, int]) -> np.ndarray:
    """``|f|`` in cycles per pixel on the unshifted FFT grid, ``(H, W)``."""
    return np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :])


def hann_window(shape: tuple[int, int]) -> np.ndarray:
    """Separable (symmetric) Hann window ``(H, W)``, zero on the outer rows and columns. It removes
    the edge cross of non-periodic images, and its far side lobes fall as ``f⁻³``, so a strong
    band leaks at most ~2 Fourier bins past its edge (a Tukey window with 25% cosine edges leaks
    enough to move an FRC crossing visibly)."""
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1]))


def periodic_hann_window(shape: tuple[int, int]) -> np.ndarray:
    """Separable Hann window sampled at pixel centres, ``sin²(π(i + ½)/n)``: no zero row or
    column, so every pixel carries weight (for noise estimates that count every pixel)."""
    def hann(n: int) -> np.ndarray:
        return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2

    return np.outer(hann(shape[0]), hann(shape[1]))
