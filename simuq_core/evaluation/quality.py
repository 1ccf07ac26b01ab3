"""Side-by-side image quality of SIM reconstructions: widefield, classical SIM and networks scored
by the same code.

Every function takes NumPy images ``(H, W)`` or batches ``(N, H, W)`` on one grid
(:func:`as_batch`, :func:`paired_batches`) and returns per-image values with the batch shape
(``()`` for one image, ``(N,)`` for a batch). Frequencies are in cycles per pixel of that grid
(``f ∈ [-0.5, 0.5)``); ``pixel_nm`` is its pixel size.

- :func:`register_subpixel`: phase cross-correlation (``skimage``) with upsampling, applied as a
  Fourier shift; shifts beyond ``max_shift`` px are rejected (a reconstruction is expected to be off
  by a pixel or two; a larger "shift" means a wrong grid, a flip or a failed reconstruction, and
  scoring it after a large circular shift would hide that).
- :func:`psnr_ssim`: after registration and the least-squares fit ``a·pred + b ≈ gt``
  (:func:`simuq_core.evaluation.synthetic.affine_align`), PSNR with data range ``max(gt) − min(gt)`` and SSIM
  (``skimage``) with the same range, on the interior (a ``border`` of ``ceil(max_shift)`` px that
  the circular shift may have wrapped is left out for every method alike).
- :func:`spectral_correlation`: ``Re Σ F_rec·conj(F_gt) / sqrt(Σ|F_rec|² Σ|F_gt|²)`` over the
  ring ``1.1·k_wf < |f| < 0.9·(k_wf + |k_pattern|)`` beyond the widefield cut-off, and over the
  widefield band ``|f| < 0.9·k_wf`` as a sanity value; ≈ 0 beyond the cut-off means no true
  information there.

Resolution (FRC, decorrelation analysis) is in :mod:`simuq_core.evaluation.resolution`, the SIM
passband in :mod:`simuq_core.evaluation.sim_band`, and the per-method tables that combine them in
:mod:`simuq_core.evaluation.quality_summary`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity
from skimage.registration import phase_cross_correlation

from simuq_core.evaluation.synthetic import affine_align
from simuq_core.optics.spectra import freq_radius, hann_window

__all__ = [
    "SpectralCorrelation",
    "apodised_spectrum",
    "as_batch",
    "paired_batches",
    "pattern_norm",
    "psnr_ssim",
    "register_or_keep",
    "register_subpixel",
    "spectral_correlation",
]

# Ring limits of the spectral correlation, as fractions of the band edges: keep clear of the
# widefield cut-off, where the OTF is ~0 but window leakage from just below it is not.
_RING_INNER = 1.1
_RING_OUTER = 0.9
_WF_OUTER = 0.9


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def as_batch(img: np.ndarray, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(H, W)`` or ``(N, H, W)`` → ``(N, H, W)`` float64 and the batch shape to restore."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 2:
        return a[None], ()
    if a.ndim == 3:
        return a, (a.shape[0],)
    raise ValueError(f"{name} must be (H, W) or (N, H, W), got shape {a.shape}")


def paired_batches(a: np.ndarray, b: np.ndarray, names: tuple[str, str]
                   ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Two images or batches of one shape as ``(N, H, W)`` float64 each, and the batch shape to
    restore; ``names`` name them in the error."""
    a3, batch = as_batch(a, names[0])
    b3, batch_b = as_batch(b, names[1])
    if a3.shape != b3.shape or batch != batch_b:
        raise ValueError(f"{names[0]} {np.shape(a)} and {names[1]} {np.shape(b)} must have one shape")
    return a3, b3, batch


def apodised_spectrum(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """FFT of ``(img − mean)·window``: the mean is removed first so the window does not turn the
    DC level into a low-frequency bump."""
    return np.fft.fft2((img - img.mean()) * window)


def pattern_norm(k_pattern: float | np.ndarray) -> float:
    """``|k|`` from a scalar or wave vectors ``(2,)`` / ``(F, 2)``; with several orientations the
    smallest, so the ring holds only frequencies every orientation reaches."""
    k = np.asarray(k_pattern, dtype=np.float64)
    if k.ndim == 0:
        return float(abs(k))
    return float(np.min(np.linalg.norm(k.reshape(-1, k.shape[-1]), axis=-1)))


# ----------------------------------------------------------------------------------------------
# Registration, PSNR, SSIM
# ----------------------------------------------------------------------------------------------


def register_subpixel(
    pred: np.ndarray, gt: np.ndarray, upsample: int = 20, max_shift: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Shift ``pred`` onto ``gt`` with sub-pixel precision.

    The shift is the peak of the phase cross-correlation, refined by a matrix-multiply DFT to
    ``1/upsample`` px (``skimage.registration.phase_cross_correlation``), and is applied as the
    phase ramp ``F(pred)·exp(−2πi f·s)`` (``scipy.ndimage.fourier_shift``; circular at the edges).

    Parameters
    ----------
    pred, gt : ``(H, W)`` or ``(N, H, W)``; any affine intensity relation between them.
    upsample : precision of the shift is ``1/upsample`` px.
    max_shift : largest accepted ``|shift|`` per axis (px).

    Returns
    -------
    shifted : pred shifted onto gt, shape and batch of ``pred``, float64.
    shift : ``(2,)`` or ``(N, 2)`` as ``(dy, dx)`` px, the shift applied to ``pred``.

    Raises
    ------
    ValueError
        if a shift exceeds ``max_shift``: the images are not two views of one scene on one grid.
    """
    p3, g3, batch = paired_batches(pred, gt, ("pred", "gt"))
    shifted = np.empty_like(p3)
    shifts = np.empty((len(p3), 2))
    for i, (p, g) in enumerate(zip(p3, g3, strict=True)):
        shift, _, _ = phase_cross_correlation(g, p, upsample_factor=upsample)
        if np.max(np.abs(shift)) > max_shift:
            raise ValueError(
                f"image {i}: registration shift (dy, dx) = {tuple(np.round(shift, 2))} px exceeds "
                f"max_shift = {max_shift} px; pred and gt are probably on different grids, flipped, or "
                "pred holds no structure of gt (pass register=False to score it unregistered)"
            )
        # a zero shift leaves the image bit-exact (the FFT round trip would not)
        shifted[i] = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(p), shift)).real if np.any(shift) else p
        shifts[i] = shift
    return shifted.reshape(np.shape(pred)), shifts.reshape(*batch, 2)


def register_or_keep(p3: np.ndarray, g3: np.ndarray, upsample: int, max_shift: float
                      ) -> tuple[np.ndarray, int]:
    """Register every image that registers within ``max_shift``; keep the others as they are
    (a reconstruction without the GT's structure, e.g. an untrained or failed one, is then scored
    unregistered instead of stopping the whole table). Returns the images and how many failed."""
    out, failed = [], 0
    for p, g in zip(p3, g3, strict=True):
        try:
            out.append(register_subpixel(p, g, upsample, max_shift)[0])
        except ValueError:
            out.append(p)
            failed += 1
    return np.stack(out), failed


def _psnr(pred: np.ndarray, gt: np.ndarray, data_range: float) -> float:
    """``20 log10(range / RMSE)``; ``inf`` for an exact match."""
    rmse = float(np.sqrt(np.mean((pred - gt) ** 2)))
    return math.inf if rmse == 0.0 else 20.0 * math.log10(data_range / rmse)


def psnr_ssim(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    register: bool = True,
    upsample: int = 20,
    max_shift: float = 2.0,
    border: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB) and SSIM of ``pred`` against ``gt`` after registration and an affine fit.

    Per image: register (:func:`register_subpixel`), crop ``border`` px on each side, fit
    ``a·pred + b`` to ``gt`` by least squares (:func:`simuq_core.evaluation.synthetic.affine_align`; a
    reconstruction has no absolute scale), then with ``R = max(gt) − min(gt)`` on the crop

    ``PSNR = 20 log10(R / RMSE)`` (``inf`` when ``RMSE = 0``) and
    ``SSIM = structural_similarity(gt, a·pred + b, data_range=R)`` (7×7 uniform window).

    Parameters
    ----------
    pred, gt : ``(H, W)`` or ``(N, H, W)``.
    register : register first (otherwise ``pred`` is taken as aligned).
    border : px left out on each side; default ``ceil(max_shift)`` (the band a circular shift may
        have wrapped), the same for every method.

    Returns
    -------
    psnr, ssim : the batch shape, ``()`` or ``(N,)``.
    """
    p3, g3, batch = paired_batches(pred, gt, ("pred", "gt"))
    if register:
        p3, _ = register_subpixel(p3, g3, upsample, max_shift)
    b = math.ceil(max_shift) if border is None else border
    if b:
        p3, g3 = p3[:, b:-b, b:-b], g3[:, b:-b, b:-b]
    aligned, _, _ = affine_align(p3, g3)
    psnr = np.empty(len(p3))
    ssim = np.empty(len(p3))
    for i, (p, g) in enumerate(zip(aligned, g3, strict=True)):
        data_range = max(float(g.max() - g.min()), 1e-12)
        psnr[i] = _psnr(p, g, data_range)
        ssim[i] = structural_similarity(g, p, data_range=data_range)
    return psnr.reshape(batch), ssim.reshape(batch)


# ----------------------------------------------------------------------------------------------
# Spectral correlation beyond the widefield cut-off
# ----------------------------------------------------------------------------------------------


class SpectralCorrelation(NamedTuple):
    """Normalised cross-spectra of a reconstruction with the GT (batch shape each).

    beyond : over ``1.1·k_wf < |f| < 0.9·(k_wf + |k_pattern|)``: information past the cut-off.
    widefield : over ``0 < |f| < 0.9·k_wf`` (sanity value: high for any faithful image).
    n_beyond, n_widefield : Fourier samples in each region (the full, Hermitian FFT grid).
    """

    beyond: np.ndarray
    widefield: np.ndarray
    n_beyond: int
    n_widefield: int


def _band_correlation(fa: np.ndarray, fb: np.ndarray, mask: np.ndarray) -> float:
    num = np.real(np.sum(fa[mask] * np.conj(fb[mask])))
    den = math.sqrt(float(np.sum(np.abs(fa[mask]) ** 2) * np.sum(np.abs(fb[mask]) ** 2)))
    return num / den if den > 0 else math.nan


def spectral_correlation(
    rec: np.ndarray,
    gt: np.ndarray,
    k_wf: float,
    k_pattern: float | np.ndarray,
    *,
    register: bool = True,
    upsample: int = 20,
    max_shift: float = 2.0,
) -> SpectralCorrelation:
    """Correlation of ``rec`` with ``gt`` in the band that only SIM can fill.

    ``C = Re Σ F_rec·conj(F_gt) / sqrt(Σ|F_rec|² · Σ|F_gt|²)`` over Fourier samples ``f`` with
    ``1.1·k_wf < |f| < 0.9·(k_wf + |k_pattern|)``, where ``F`` is the FFT of the image after
    registration, mean removal and a 2-D Hann window. ``C ≈ 1``: the reconstruction reproduces the
    GT there; ``C ≈ 0``: nothing true (independent noise gives ``C ~ N(0, ≈3.8/n_beyond)``, the
    3.8 being the Hann window's variance inflation ``(35/18)²``).

    Parameters
    ----------
    rec, gt : ``(H, W)`` or ``(N, H, W)`` on one grid.
    k_wf : widefield (OTF) cut-off ``2 NA / λ`` in cycles per pixel of this grid
        (:func:`simuq_core.optics.imaging.otf_cutoff_cycles_per_px` with this grid's pixel size).
    k_pattern : pattern frequency in cycles per pixel of this grid: ``|k|``, a wave vector
        ``(2,)`` or all frames' ``(F, 2)`` (the smallest norm is used). Simulator patterns are in
        cycles per LR pixel: divide by the up-sampling factor for the HR grid.
    register : register ``rec`` onto ``gt`` first (:func:`register_subpixel`).

    Returns
    -------
    :class:`SpectralCorrelation`; NaN where a region is empty or an image is constant there.
    """
    r3, g3, batch = paired_batches(rec, gt, ("rec", "gt"))
    if register:
        r3, _ = register_subpixel(r3, g3, upsample, max_shift)
    shape = r3.shape[1:]
    radius = freq_radius(shape)
    k = pattern_norm(k_pattern)
    beyond = (radius > _RING_INNER * k_wf) & (radius < _RING_OUTER * (k_wf + k))
    band = (radius > 0) & (radius < _WF_OUTER * k_wf)
    window = hann_window(shape)
    out_beyond, out_wf = np.empty(len(r3)), np.empty(len(r3))
    for i, (r, g) in enumerate(zip(r3, g3, strict=True)):
        fr, fg = apodised_spectrum(r, window), apodised_spectrum(g, window)
        out_beyond[i] = _band_correlation(fr, fg, beyond) if beyond.any() else math.nan
        out_wf[i] = _band_correlation(fr, fg, band) if band.any() else math.nan
    return SpectralCorrelation(out_beyond.reshape(batch), out_wf.reshape(batch),
                               int(beyond.sum()), int(band.sum()))

