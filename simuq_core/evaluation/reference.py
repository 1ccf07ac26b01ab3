"""Scores against a reference: a high-SNR reconstruction of the same field, when a lab has one.

A reference is itself a reconstruction (classical SIM of brighter data, or another instrument's):
it has no absolute scale, its own noise, and it may be shifted by a few pixels of stage drift.
Every method is therefore scored the same way (docs/design.md §6, "Against a reference"):

1. **Grid**: the image must be on the reference's grid (the model grid: camera px / rescale); a
   reference of another shape is refused with both shapes named.
2. **Register** (:func:`~simuq_core.evaluation.quality.register_subpixel`, up to ``max_shift`` px)
   and check the overlap: after registration the image must correlate with the reference
   (Pearson ``r ≥ min_corr`` on the interior), else the reference does not show this field.
3. **Fit** ``a·image + b ≈ reference`` on the interior (``border = ceil(max_shift)`` px left out,
   the band a circular shift may have wrapped), then PSNR / SSIM
   (:func:`~simuq_core.evaluation.quality.psnr_ssim`) and the spectral correlation beyond the
   widefield cut-off (:func:`~simuq_core.evaluation.quality.spectral_correlation`).
4. **Calibration** of a std map (the emitter std): with the same shift and ``a``,
   ``err = a·image + b − reference`` and ``var = a²·std²``; ZMS, coverage of the 68 / 95 %
   intervals, Spearman ``(v, err²)`` (= Spearman ``(std, |err|)``), ``|z|`` quantiles and the
   binned calibration curve (:mod:`simuq_core.evaluation.calibration_curves`). The reference's own
   noise is part of ``err``: a std that covers the reference 95 % of the time is the std a user can
   act on when comparing with a better acquisition.

:func:`twin_check` is the ground-truth-free counterpart for two acquisitions of one field: the
difference of the two emitters against their combined std measures the noise-driven part of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from simuq_core.evaluation.calibration_curves import calibration_curve
from simuq_core.evaluation.metrics import calibration_metrics
from simuq_core.evaluation.quality import psnr_ssim, register_subpixel, spectral_correlation
from simuq_core.evaluation.synthetic import affine_align

__all__ = ["ReferenceMismatch", "calibration_against", "score_against_reference", "twin_check"]

#: Below this correlation after registration, an image and a reference are not views of one field.
MIN_CORRELATION = 0.2


class ReferenceMismatch(ValueError):
    """A reference (or a twin) that cannot be compared with the reconstruction: another grid, or
    no overlap after registration. The message names both and what was expected."""


def _registered(image: np.ndarray, reference: np.ndarray, name: str, max_shift: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """``image`` shifted onto ``reference`` and the shift ``(dy, dx)``; :class:`ReferenceMismatch`
    when the grids differ or the shift exceeds ``max_shift``."""
    if image.shape != reference.shape:
        raise ReferenceMismatch(f"{name}: shape {image.shape} is not the reference's {reference.shape}; "
                                "expected a reference on the reconstruction grid (camera px / rescale)")
    try:
        shifted, shift = register_subpixel(image, reference, max_shift=max_shift)
    except ValueError as exc:
        raise ReferenceMismatch(f"{name}: no overlap within {max_shift:g} px after registration, "
                                f"not the same field of view ({exc})") from None
    return shifted, np.asarray(shift, np.float64)


def _shift(img: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``img`` moved by ``shift`` ``(dy, dx)`` px (Fourier shift, circular), as the registration
    moved its image."""
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(img), shift)).real


def _interior(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border else img


def _overlap_corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else math.nan


def calibration_against(image: np.ndarray, std: np.ndarray, reference: np.ndarray, *, name: str = "image",
                        max_shift: float = 8.0, n_bins: int = 12) -> dict[str, Any]:
    """Calibration of ``std`` (module docstring, step 4) for ``image`` against ``reference``, all
    ``(H, W)`` on one grid: the :func:`~simuq_core.evaluation.metrics.calibration_metrics` values
    (``zms``, ``coverage_68``, ``coverage_95``, ``spearman``, …), ``abs_z_q68`` / ``abs_z_q95``
    (Gaussian: 1.0 / 1.96) and ``curve`` (``rmv``, ``rmse``, ``count`` per bin of ``std``)."""
    image, std, reference = (np.asarray(v, np.float64) for v in (image, std, reference))
    if std.shape != image.shape:
        raise ReferenceMismatch(f"{name}: std shape {std.shape} is not the image's {image.shape}")
    shifted, shift = _registered(image, reference, name, max_shift)
    var = std**2
    if np.any(shift):  # the std moves with its image (an interpolated variance stays in its range)
        var = np.clip(_shift(var, shift), var.min(), var.max())
    border = math.ceil(max_shift)
    p, v, g = (_interior(a, border) for a in (shifted, var, reference))
    aligned, scaled_var, coef = affine_align(p[None], g[None], v[None])
    err = aligned[0] - g
    out = calibration_metrics(aligned[0], g, np.maximum(scaled_var[0], 1e-30), component="c")
    out = {k.removeprefix("c_"): v for k, v in out.items()}
    z = np.abs(err) / np.sqrt(np.maximum(scaled_var[0], 1e-30))
    out["abs_z_q68"], out["abs_z_q95"] = (float(q) for q in np.quantile(z, [0.6827, 0.95]))
    curve = calibration_curve(err, np.maximum(scaled_var[0], 1e-30), n_bins=n_bins, n_bootstrap=50)
    out["curve"] = {"rmv": curve.rmv.tolist(), "rmse": curve.rmse.tolist(), "count": curve.count.tolist()}
    out["affine_a"], out["affine_b"] = float(coef[0, 0]), float(coef[0, 1])
    return out


def score_against_reference(reference: np.ndarray, images: Mapping[str, np.ndarray], *, k_wf: float,
                            k_pattern: float, stds: Mapping[str, np.ndarray] | None = None,
                            max_shift: float = 8.0, min_corr: float = MIN_CORRELATION
                            ) -> dict[str, Any]:
    """Every image in ``images`` (name → ``(H, W)``) scored against ``reference`` ``(H, W)``
    (module docstring) and every std in ``stds`` (name of its image → ``(H, W)``) calibrated
    against it.

    ``k_wf`` / ``k_pattern``: the widefield cut-off and the pattern frequency in cycles per pixel
    of this grid (for the spectral correlation's ring). Returns ``{"methods": {name: {psnr, ssim,
    spectral_corr_beyond, spectral_corr_widefield, overlap_corr, shift_yx}}, "calibration": {name:
    …}, "warnings": [...]}``; an image that does not overlap the reference gets a warning and no
    scores (the others are still scored).
    """
    reference = np.asarray(reference, np.float64)
    if reference.ndim != 2:
        raise ReferenceMismatch(f"the reference has shape {reference.shape}; expected one image (H, W)")
    out: dict[str, Any] = {"methods": {}, "calibration": {}, "warnings": []}
    border = math.ceil(max_shift)
    for name, image in images.items():
        image = np.asarray(image, np.float64)
        try:
            shifted, shift = _registered(image, reference, name, max_shift)
        except ReferenceMismatch as exc:
            out["warnings"].append(f"reference mismatch: {exc}")
            continue
        corr = _overlap_corr(_interior(shifted, border), _interior(reference, border))
        if not corr >= min_corr:
            out["warnings"].append(
                f"reference mismatch: {name} correlates with the reference at r = {corr:.2f} after "
                f"registration (< {min_corr:g}): the reference does not show this field of view")
            continue
        psnr, ssim = psnr_ssim(shifted, reference, register=False, border=border)
        spec = spectral_correlation(_interior(shifted, border), _interior(reference, border), k_wf, k_pattern,
                                    register=False)
        out["methods"][name] = {"psnr": float(psnr), "ssim": float(ssim),
                                "spectral_corr_beyond": float(spec.beyond),
                                "spectral_corr_widefield": float(spec.widefield),
                                "overlap_corr": corr, "shift_yx": [float(s) for s in shift]}
        if stds is not None and name in stds:
            out["calibration"][name] = calibration_against(image, stds[name], reference, name=name,
                                                           max_shift=max_shift)
    return out


def twin_check(e1: np.ndarray, std1: np.ndarray, e2: np.ndarray, std2: np.ndarray, *,
               max_shift: float = 8.0, min_corr: float = MIN_CORRELATION) -> dict[str, float]:
    """Two emitters of one field (twins: repeated acquisitions, or consecutive time points of a
    fixed sample) against their stds: ``e2`` is registered onto ``e1`` and fitted
    (``a·e2 + b ≈ e1``; normalisations differ per file), then ``z = (e1 − a·e2 − b)/√(v1 + a²v2)``.
    Independent noise makes ``z`` standard normal if both stds hold the noise-driven error (any
    shared bias cancels: this checks the noise part of the std, not the bias part). Returns
    ``zms``, ``coverage_68``, ``coverage_95``, ``spearman``, ``overlap_corr``;
    :class:`ReferenceMismatch` when the twins are not views of one field."""
    e1, s1, e2, s2 = (np.asarray(v, np.float64) for v in (e1, std1, e2, std2))
    shifted, shift = _registered(e2, e1, "second twin", max_shift)
    v2 = np.clip(_shift(s2**2, shift), (s2**2).min(), (s2**2).max()) if np.any(shift) else s2**2
    border = math.ceil(max_shift)
    a, va, b, vb = (_interior(x, border) for x in (e1, s1**2, shifted, v2))
    corr = _overlap_corr(a, b)
    if not corr >= min_corr:
        raise ReferenceMismatch(f"the twins correlate at r = {corr:.2f} after registration (< {min_corr:g}): "
                                "they are not the same field of view")
    aligned, scaled, _ = affine_align(b[None], a[None], vb[None])
    metrics = calibration_metrics(aligned[0], a, np.maximum(va + scaled[0], 1e-30), component="t")
    keep = ("zms", "coverage_68", "coverage_95", "spearman", "n_pixels")
    return {k: float(metrics[f"t_{k}"]) for k in keep} | {"overlap_corr": corr}
