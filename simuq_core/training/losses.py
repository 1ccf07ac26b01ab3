"""Likelihoods and reconstruction losses (docs/design.md §1, §4.5), pure JAX.

Images are ``(B, C, H, W)`` (``C`` = frames for a reconstruction); likelihood inputs may have any
shape as long as ``x``, ``mean`` and ``var`` agree. Every loss is reduced to a scalar by a
(weighted) mean.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from simuq_core.optics.imaging import block_mean

__all__ = [
    "AUX_REC_MODES",
    "MS_SSIM_WEIGHTS",
    "aux_rec_loss",
    "gaussian_nll",
    "gaussian_nll_map",
    "l1_loss",
    "ms_ssim",
    "ms_ssim_num_scales",
    "ssim",
    "ssim_map",
]

AUX_REC_MODES = ("l1", "ms-ssim", "l1+ms-ssim")
# Wang, Simoncelli & Bovik (2003), finest to coarsest.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------------------------


def _weighted_mean(values: jnp.ndarray, weights: jnp.ndarray | None) -> jnp.ndarray:
    """``sum(w·v) / sum(w)`` (plain mean without weights); an all-zero mask gives 0, not NaN."""
    if weights is None:
        return values.mean()
    w = jnp.broadcast_to(jnp.asarray(weights, values.dtype), values.shape)
    return (w * values).sum() / jnp.maximum(w.sum(), jnp.finfo(values.dtype).tiny)


# ----------------------------------------------------------------------------------------------
# Gaussian likelihood
# ----------------------------------------------------------------------------------------------


def gaussian_nll_map(
    x: jnp.ndarray, mean: jnp.ndarray, var: jnp.ndarray, include_const: bool = False
) -> jnp.ndarray:
    """Per-pixel Gaussian NLL ``0.5·((x − μ)²/v + log v) [+ 0.5·log 2π]``, same shape as ``x``.

    Its expectation under ``x ~ N(μ, v)`` is ``0.5·(1 + log v) [+ 0.5·log 2π]``.
    """
    nll = 0.5 * ((x - mean) ** 2 / var + jnp.log(var))
    return nll + _HALF_LOG_2PI if include_const else nll


def gaussian_nll(
    x: jnp.ndarray,
    mean: jnp.ndarray,
    var: jnp.ndarray,
    *,
    beta: float = 0.0,
    detach_mean: bool = False,
    weights: jnp.ndarray | None = None,
    mask: jnp.ndarray | None = None,
    include_const: bool = False,
) -> jnp.ndarray:
    """(β-)Gaussian NLL, reduced by a (weighted) mean over all elements (docs/design.md §1, §4.5).

    Per pixel ``ℓ = sg(v)^β · 0.5·((x − μ)²/v + log v)`` (β-NLL, Seitzer et al. 2022; ``sg`` =
    stop-gradient). ``β = 0`` is the plain NLL; ``β > 0`` rescales each pixel's gradients by
    ``v^β`` without changing the optimum, so ``∂ℓ/∂μ = −(x − μ)·v^(β−1)`` (``β = 1``: the MSE
    gradient) and ``∂ℓ/∂v = v^β·0.5·(1/v − (x − μ)²/v²)``.

    ``detach_mean=True`` (Stirn et al. 2023, "faithful" heteroscedastic regression): the variance
    is fitted to ``stop_gradient`` residuals and the mean gets its own unit-weight squared error,

        ``ℓ = sg(v)^β · 0.5·((x − sg(μ))²/v + log v) + 0.5·(x − μ)²``,

    so ``∂ℓ/∂μ = −(x − μ)`` exactly (independent of ``v`` and ``β``: pixels the model calls noisy
    are not under-fitted) and ``∂ℓ/∂v`` is the same as without detaching. The loss *value* then
    contains the extra ``0.5·(x − μ)²`` term. (Gradients that reach the mean's parameters through
    ``v`` itself, e.g. ``a·rec`` noise or ``μe²·Var l``, are stopped in
    :func:`simuq_core.uncertainty.propagation.propagate_rec_variance` with ``detach_mean_in_var=True``; pass
    the flag to both.)

    Parameters
    ----------
    x, mean, var : same shape; ``var > 0`` (floor it upstream).
    beta : β-NLL exponent in ``[0, 1]``.
    weights : optional non-negative weights (broadcast to ``x``'s shape); ``mask`` : optional
        boolean keep-mask, combined multiplicatively with ``weights``. Reduction:
        ``sum(w·ℓ)/sum(w)``.
    include_const : add ``0.5·log 2π`` (the exact negative log-density).
    """
    mean_in_var = jax.lax.stop_gradient(mean) if detach_mean else mean
    per_pixel = gaussian_nll_map(x, mean_in_var, var, include_const)
    if beta != 0.0:
        per_pixel = jax.lax.stop_gradient(var) ** beta * per_pixel
    if detach_mean:
        per_pixel = per_pixel + 0.5 * (x - mean) ** 2
    if mask is not None:
        m = jnp.asarray(mask, per_pixel.dtype)
        weights = m if weights is None else jnp.asarray(weights, per_pixel.dtype) * m
    return _weighted_mean(per_pixel, weights)


# ----------------------------------------------------------------------------------------------
# Reconstruction losses
# ----------------------------------------------------------------------------------------------


def l1_loss(
    rec: jnp.ndarray, x: jnp.ndarray, weights: jnp.ndarray | None = None
) -> jnp.ndarray:
    """Mean absolute error ``mean(|rec − x|)`` (weighted mean with ``weights``)."""
    return _weighted_mean(jnp.abs(rec - x), weights)


def _gaussian_window_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised sampled Gaussian as in ``scipy.ndimage.gaussian_filter`` (size = 2·radius + 1)."""
    t = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _filter_valid(img: jnp.ndarray, window: np.ndarray) -> jnp.ndarray:
    """Separable Gaussian filter over the last two axes, ``"valid"`` region only.

    ``(N, 1, H, W) -> (N, 1, H − k + 1, W − k + 1)``. The window is symmetric, so correlation and
    convolution coincide.
    """
    k = window.shape[0]
    w = jnp.asarray(window, img.dtype)
    dn = ("NCHW", "OIHW", "NCHW")
    out = jax.lax.conv_general_dilated(img, w.reshape(1, 1, k, 1), (1, 1), "VALID",
                                       dimension_numbers=dn)
    return jax.lax.conv_general_dilated(out, w.reshape(1, 1, 1, k), (1, 1), "VALID",
                                        dimension_numbers=dn)


def _ssim_and_cs_maps(
    a: jnp.ndarray, b: jnp.ndarray, data_range: float, win_size: int, sigma: float,
    k1: float, k2: float,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """SSIM and contrast-structure maps on the valid region, ``(B, C, H, W) -> (B, C, h, w)``.

    Population (co)variances with Gaussian weights (Wang et al. 2004), as
    ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``.
    """
    bsz, ch, h, w = a.shape
    if min(h, w) < win_size:
        raise ValueError(f"image {h}x{w} is smaller than the SSIM window {win_size}")
    window = _gaussian_window_1d(win_size, sigma)
    a = a.reshape(bsz * ch, 1, h, w)
    b = b.reshape(bsz * ch, 1, h, w)
    # One filter call for the five moment maps.
    stack = jnp.concatenate([a, b, a * a, b * b, a * b], axis=0)
    mu_a, mu_b, e_aa, e_bb, e_ab = jnp.split(_filter_valid(stack, window), 5, axis=0)
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    cs = (2.0 * cov + c2) / (var_a + var_b + c2)
    lum = (2.0 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    shape = (bsz, ch) + cs.shape[-2:]
    return (lum * cs).reshape(shape), cs.reshape(shape)


def ssim_map(
    a: jnp.ndarray, b: jnp.ndarray, data_range: float = 1.0, *, win_size: int = 11,
    sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
) -> jnp.ndarray:
    """Per-pixel SSIM on the valid region ``(B, C, H − 10, W − 10)`` (window 11, σ 1.5)."""
    return _ssim_and_cs_maps(a, b, data_range, win_size, sigma, k1, k2)[0]


def ssim(
    a: jnp.ndarray, b: jnp.ndarray, data_range: float = 1.0, *, win_size: int = 11,
    sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
) -> jnp.ndarray:
    """Mean single-scale SSIM of ``(B, C, H, W)`` images (scalar).

    ``SSIM = (2μaμb + C1)(2σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2))``, ``C1 = (K1·R)²``,
    ``C2 = (K2·R)²``, ``R = data_range``, Gaussian window ``win_size`` (11) with σ 1.5, averaged
    over the valid region (the ``(win_size − 1)/2`` border is dropped, like skimage's crop) and over
    images and channels; equals skimage's ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=R)`` per 2-D image.
    """
    return ssim_map(a, b, data_range, win_size=win_size, sigma=sigma, k1=k1, k2=k2).mean()


def ms_ssim_num_scales(height: int, width: int, win_size: int = 11, max_scales: int = 5) -> int:
    """Scales that fit: the largest ``M ≤ 5`` with ``min(H, W) // 2^(M−1) ≥ win_size``.

    (Each 2× downsampling must leave at least one full window.) E.g. 32×32 → 2, 80×80 → 3,
    ≥ 176×176 → 5. Raises if even one scale does not fit.
    """
    side = min(height, width)
    if side < win_size:
        raise ValueError(f"image {height}x{width} is smaller than the SSIM window {win_size}")
    m = 1
    while m < max_scales and side // 2**m >= win_size:
        m += 1
    return m


def _downsample2(x: jnp.ndarray) -> jnp.ndarray:
    """2×2 mean pooling; an odd trailing row/column is dropped."""
    h, w = x.shape[-2:]
    return block_mean(x[..., : h - h % 2, : w - w % 2], 2)


def ms_ssim(
    a: jnp.ndarray, b: jnp.ndarray, data_range: float = 1.0, *, win_size: int = 11,
    sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03, eps: float = 1e-6,
) -> jnp.ndarray:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) of ``(B, C, H, W)`` images (scalar).

    Per image and channel ``MS-SSIM = Π_{j<M} cs_j^{w_j} · ssim_M^{w_M}`` with ``cs_j`` / ``ssim_j``
    the mean contrast-structure / SSIM at scale ``j`` (2×2 mean pooling between scales), then
    averaged over images and channels. ``M`` = :func:`ms_ssim_num_scales` (scales reduced
    automatically for small images); the first ``M`` of :data:`MS_SSIM_WEIGHTS` are used,
    renormalised to sum to 1, so identical images give exactly 1. Per-scale values are clamped at
    ``eps`` before the fractional power (negative cs would give NaN; 0 an infinite gradient).
    """
    m = ms_ssim_num_scales(a.shape[-2], a.shape[-1], win_size)
    weights = np.asarray(MS_SSIM_WEIGHTS[:m], dtype=np.float64)
    weights = weights / weights.sum()
    log_total = jnp.zeros(a.shape[:2], a.dtype)
    for j in range(m):
        s_map, cs_map = _ssim_and_cs_maps(a, b, data_range, win_size, sigma, k1, k2)
        value = (s_map if j == m - 1 else cs_map).mean(axis=(-2, -1))
        log_total = log_total + float(weights[j]) * jnp.log(jnp.maximum(value, eps))
        if j < m - 1:
            a, b = _downsample2(a), _downsample2(b)
    return jnp.exp(log_total).mean()


def aux_rec_loss(
    rec: jnp.ndarray, x: jnp.ndarray, mode: str = "l1+ms-ssim", data_range: float = 1.0
) -> jnp.ndarray:
    """Auxiliary reconstruction loss (docs/design.md §2, ``uq.aux_rec_mode``), ``(B, C, H, W)`` inputs.

    ``"l1"``: ``mean|rec − x|``; ``"ms-ssim"``: ``1 − MS-SSIM(rec, x)``; ``"l1+ms-ssim"``: their
    unweighted sum. ``data_range`` is the intensity range of the (normalised) images.
    """
    if mode not in AUX_REC_MODES:
        raise ValueError(f"aux_rec_mode must be one of {AUX_REC_MODES}, got {mode!r}")
    loss = jnp.zeros((), rec.dtype)
    if "l1" in mode.split("+"):
        loss = loss + l1_loss(rec, x)
    if "ms-ssim" in mode.split("+"):
        loss = loss + 1.0 - ms_ssim(rec, x, data_range)
    return loss
