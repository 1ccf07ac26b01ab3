"""The photon-transfer line of raw camera frames: gain and offset from the noise beyond the OTF.

A camera pixel of expected value ``μ`` (ADU) holds
``λ = (μ − o)/g`` photo-electrons (gain ``g`` ADU/e⁻, offset ``o``); Poisson shot noise plus
Gaussian read noise ``r`` (e⁻) give::

    Var(x) = g·(μ − o) + g²·r² = g·μ + c,      c = g²·r² − g·o.

The optics pass nothing beyond the OTF cut-off ``k_c = 2NA/λ`` (cycles/px), so the frame
high-passed to ``|f| > margin·k_c`` (ideal mask ``M``, ``h = IFFT(M)``) holds noise only. For
independent pixel noise of any variance map ``σ²(y)``::

    E[hp(x)²] = Σ_y h(x − y)²·σ²(y) = g·(h²⊛μ)(x) − (g·o − g²r²)·β,     β = Σ h² = mean(M),

so ``hp²/β`` and the *same-weighted* local mean ``h²⊛x/β`` obey the photon-transfer line exactly,
pixel by pixel (β: the band's share of a white spectrum). Both are averaged in blocks; the line
``v = g·m + c`` is fitted by iteratively re-weighted least squares with the block estimate's own
variance ``2v²/(N·β)`` (``N·β`` independent squares per block of ``N`` pixels) and Huber weights
(``|z| > 3`` down-weighted: hot pixels, clipped or defective blocks). Frames are first split into
a periodic and a smooth part (Moisan's decomposition), so the crop edges' jump does not leak into
the noise band. ``g`` is the slope, so photon numbers ``(x − o)/g`` are right even for a file
rescaled after acquisition (the rescaling multiplies both ``x − o`` and ``g``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from simuq_core.optics.spectra import freq_radius

__all__ = ["PhotonTransfer", "periodic_smooth", "photon_transfer"]


# Huber threshold of the photon-transfer fit, in standard errors of a block's variance estimate.
_HUBER = 3.0


class PhotonTransfer(NamedTuple):
    """:func:`photon_transfer`'s line ``Var = g·mean + c`` (ADU², ADU).

    ``gain`` ``g`` (ADU/e⁻) and ``intercept`` ``c`` (ADU²) with standard errors and covariance
    ``cov`` ``(2, 2)`` (inflated by ``reduced_chi2`` when > 1); ``reduced_chi2``: the weighted
    residual scatter over its Poisson–Gaussian expectation (≈ 1 when the model holds);
    ``n_blocks`` / ``n_used``: blocks fitted / with full weight; ``mean_range``: the 1st–99th
    percentile of the block means (ADU); ``whiteness``: noise power of the outer over the inner half
    of the noise band (1 for white noise); ``band_fraction``: ``β``.
    """

    gain: float
    intercept: float
    gain_se: float
    intercept_se: float
    cov: np.ndarray
    reduced_chi2: float
    n_blocks: int
    n_used: int
    mean_range: tuple[float, float]
    whiteness: float
    band_fraction: float


def periodic_smooth(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moisan's periodic + smooth decomposition of ``(N, H, W)`` frames: ``u = p + s`` with ``p``
    free of the wrap-around jump (its FFT has no edge cross) and ``s`` smooth (spectrum ~1/|f|²)."""
    n, h, w = frames.shape
    v = np.zeros_like(frames)
    v[:, 0, :] += frames[:, -1, :] - frames[:, 0, :]
    v[:, -1, :] += frames[:, 0, :] - frames[:, -1, :]
    v[:, :, 0] += frames[:, :, -1] - frames[:, :, 0]
    v[:, :, -1] += frames[:, :, 0] - frames[:, :, -1]
    cy = np.cos(2.0 * np.pi * np.arange(h) / h)[:, None]
    cx = np.cos(2.0 * np.pi * np.arange(w) / w)[None, :]
    den = 2.0 * cy + 2.0 * cx - 4.0
    den[0, 0] = 1.0
    s_spec = np.fft.fft2(v) / den
    s_spec[:, 0, 0] = 0.0
    s = np.fft.ifft2(s_spec).real
    return frames - s, s


def _block_means(images: np.ndarray, block: int, border: int) -> np.ndarray:
    """``(N, H, W)`` → ``(N, nb_y, nb_x)`` means of ``block × block`` tiles inside ``border``."""
    n, h, w = images.shape
    ny, nx = (h - 2 * border) // block, (w - 2 * border) // block
    crop = images[:, border:border + ny * block, border:border + nx * block]
    return crop.reshape(n, ny, block, nx, block).mean(axis=(2, 4))


def _fit_line(m: np.ndarray, v: np.ndarray, n_eff: float, iterations: int = 30):
    """IRLS fit of ``v = g·m + c`` with variances ``2·pred²/n_eff`` and Huber weights."""
    x = np.stack([m, np.ones_like(m)], axis=1)
    coef = np.linalg.lstsq(x, v, rcond=None)[0]
    floor = max(float(np.median(v)) * 1e-3, 1e-12)
    for _ in range(iterations):
        pred = np.maximum(x @ coef, floor)
        se = pred * math.sqrt(2.0 / n_eff)
        z = (v - pred) / se
        huber = np.minimum(1.0, _HUBER / np.maximum(np.abs(z), 1e-12))
        wts = huber / se**2
        new = np.linalg.solve(x.T @ (x * wts[:, None]), x.T @ (wts * v))
        done = np.allclose(new, coef, rtol=1e-9, atol=0.0)
        coef = new
        if done:
            break
    pred = np.maximum(x @ coef, floor)
    se = pred * math.sqrt(2.0 / n_eff)
    z = (v - pred) / se
    huber = np.minimum(1.0, _HUBER / np.maximum(np.abs(z), 1e-12))
    wts = huber / se**2
    cov = np.linalg.inv(x.T @ (x * wts[:, None]))
    full = huber >= 1.0
    chi2 = float(np.mean(z[full] ** 2)) if full.any() else float("inf")
    return coef, cov * max(chi2, 1.0), chi2, int(full.sum())


def photon_transfer(
    frames: np.ndarray,
    otf_cutoff: float,
    *,
    margin: float = 1.15,
    block: int = 8,
    border: int = 4,
    valid: np.ndarray | None = None,
) -> PhotonTransfer:
    """Fit the photon-transfer line ``Var = g·mean + c`` from raw frames (module docstring).

    Parameters
    ----------
    frames : ``(N, H, W)`` camera ADU (any frames of one camera: phases, angles, time points).
    otf_cutoff : ``k_c`` (cycles/px); ``margin·k_c`` must leave frequencies below Nyquist.
    margin : the noise band is ``|f| > margin·k_c`` (keeps a measured OTF's tail out).
    block : side of the averaging blocks (px); border : pixels dropped at every edge.
    valid : ``(N, H, W)`` bool; a block with any invalid pixel (clipped, saturated) is left out.

    Raises
    ------
    ValueError : no noise band (the camera under-samples the optics) or fewer than 8 blocks.
    """
    x = np.asarray(frames, np.float64)
    n, h, w = x.shape
    radius = freq_radius((h, w))
    mask = radius > margin * otf_cutoff
    beta = float(mask.mean())
    if mask.sum() < 16:
        raise ValueError(f"no noise band beyond {margin:g} × the OTF cut-off {otf_cutoff:.3f} cycles/px "
                         "(the camera under-samples the optics): no photon-transfer estimate")
    periodic, smooth = periodic_smooth(x)
    spec = np.fft.fft2(periodic)
    hp = np.fft.ifft2(spec * mask).real
    # h² ⊛ x / β: the local mean with the very weights the noise variance of hp(x) carries.
    h2_spec = np.fft.fft2(np.abs(np.fft.ifft2(mask.astype(np.float64))) ** 2)
    local = np.fft.ifft2(spec * h2_spec).real / beta + smooth
    v = _block_means(hp**2, block, border) / beta
    m = _block_means(local, block, border)
    keep = np.ones(v.shape, bool)
    if valid is not None:
        keep &= _block_means(np.asarray(valid, np.float64), block, border) >= 1.0
    v, m = v[keep], m[keep]
    if v.size < 8:
        raise ValueError(f"only {v.size} usable {block}×{block} blocks for the photon-transfer fit")
    n_eff = block * block * beta
    coef, cov, chi2, n_used = _fit_line(m, v, n_eff)
    # Whiteness: mean power in the outer vs the inner half (by bin count) of the noise band.
    power = (np.abs(spec) ** 2).mean(axis=0)
    r_band = radius[mask]
    split = np.median(r_band)
    inner, outer = power[mask][r_band <= split].mean(), power[mask][r_band > split].mean()
    lo, hi = np.percentile(m, [1.0, 99.0])
    return PhotonTransfer(
        gain=float(coef[0]), intercept=float(coef[1]), gain_se=float(math.sqrt(cov[0, 0])),
        intercept_se=float(math.sqrt(cov[1, 1])), cov=cov, reduced_chi2=chi2, n_blocks=int(v.size),
        n_used=n_used, mean_range=(float(lo), float(hi)), whiteness=float(outer / inner),
        band_fraction=beta)
