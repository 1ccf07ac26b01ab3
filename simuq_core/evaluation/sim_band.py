"""The SIM passband: what any reconstruction that sees the object only through the raw frames
can recover.

:func:`sim_support` is the detection OTF support ``|f| ≤ cutoff`` and its copies shifted by every
pattern wave vector; :class:`SimBand` restricts images to it and propagates per-pixel variances
through that ideal filter, so ground truth, reconstructions and their errors can be compared
within the band (``simuq_core.reports``); :func:`sim_band_limit` is the one-call form.
Frequencies are in cycles per pixel of the images' grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SimBand", "sim_band_limit", "sim_support"]


def sim_support(shape: tuple[int, int], k: np.ndarray, cutoff: float) -> np.ndarray:
    """The SIM passband on a ``shape`` grid: the detection OTF support ``|f| ≤ cutoff`` and its
    copies shifted by ``±k`` for every wave vector ``k`` ``(F, 2)`` ``(ky, kx)`` (cycles per pixel
    of this grid). Boolean ``(H, W)`` in ``numpy.fft`` order."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    mask = fy**2 + fx**2 <= cutoff**2
    for ky, kx in np.unique(np.round(np.asarray(k, np.float64).reshape(-1, 2), 12), axis=0):
        for sign in (1.0, -1.0):
            mask |= (fy - sign * ky) ** 2 + (fx - sign * kx) ** 2 <= cutoff**2
    return mask


@dataclass(frozen=True)
class SimBand:
    """The SIM passband of each of ``N`` images: what any method that sees the object
    only through the raw frames can recover.

    ``k``: ``(N, F, 2)`` wave vectors, ``cutoff``: ``(N,)`` OTF cut-offs, both in cycles per pixel
    of the images' grid. :meth:`limit` applies the ideal filter of :func:`sim_support`
    (periodic, so it is one linear map ``h ⊛``); :meth:`limit_variance` propagates independent
    per-pixel variances through it exactly: ``Var(h ⊛ δ) = h² ⊛ Var δ``.
    """

    k: np.ndarray
    cutoff: np.ndarray

    def _masks(self, shape: tuple[int, int]):
        cut = np.broadcast_to(np.asarray(self.cutoff, np.float64), (len(self.k),))
        for i in range(len(self.k)):
            yield i, sim_support(shape, self.k[i], float(cut[i]))

    def limit(self, img: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` -> the same restricted to the passband."""
        img = np.asarray(img, np.float64)
        out = np.empty_like(img)
        for i, mask in self._masks(img.shape[-2:]):
            out[i] = np.fft.ifft2(np.fft.fft2(img[i]) * mask).real
        return out

    def limit_variance(self, var: np.ndarray) -> np.ndarray:
        """Variance ``(N, H, W)`` of ``limit(δ)`` for independent pixel errors of variance ``var``."""
        var = np.asarray(var, np.float64)
        out = np.empty_like(var)
        for i, mask in self._masks(var.shape[-2:]):
            h = np.fft.ifft2(mask).real  # the filter's (real, even) kernel
            out[i] = np.fft.ifft2(np.fft.fft2(var[i]) * np.fft.fft2(h * h)).real
        return np.maximum(out, 0.0)


def sim_band_limit(img: np.ndarray, k: np.ndarray, cutoff: float | np.ndarray) -> np.ndarray:
    """``img`` ``(N, H, W)`` restricted to its SIM passband (:class:`SimBand`)."""
    return SimBand(np.asarray(k, np.float64), np.asarray(cutoff, np.float64)).limit(img)
