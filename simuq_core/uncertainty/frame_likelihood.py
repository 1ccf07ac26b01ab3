"""The F-dimensional Gaussian likelihood of the SIM residual under its cross-frame covariance.

:func:`frame_gaussian_nll` is the training loss of ``uq.frame_covariance: full`` and
:func:`frame_gaussian_nll_map` its per-pixel map; the covariance comes from
:mod:`simuq_core.uncertainty.frame_covariance`. ``F`` is small and static (9), so the Cholesky
factorisation is unrolled into elementwise operations over all pixels at once, with an analytic
gradient (custom VJP).

Shapes: residual ``(B, F, H, W)``; covariance ``(B, H, W, F, F)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["frame_gaussian_nll", "frame_gaussian_nll_map"]

_LOG_2PI = math.log(2.0 * math.pi)


def _cholesky_rows(corr: jnp.ndarray) -> list[list[jnp.ndarray]]:
    """Unrolled Cholesky ``corr = L Lᵀ`` of a stack ``(..., F, F)``: rows of ``L`` as lists of
    ``(...)`` arrays (only the lower triangle of ``corr`` is read).

    ``F`` is small and static (9), so the ``F³/6`` scalar steps run as elementwise operations over
    all pixels at once: no per-matrix LAPACK call (on CPU one call per pixel; with XLA's batched
    LAPACK custom call this machine also showed intermittent hangs, observed, not diagnosed).
    """
    lower: list[list[jnp.ndarray]] = []
    for i in range(corr.shape[-1]):
        row: list[jnp.ndarray] = []
        for j in range(i + 1):
            other = row if j == i else lower[j]
            acc = corr[..., i, j]
            for k in range(j):
                acc = acc - row[k] * other[k]
            row.append(jnp.sqrt(acc) if i == j else acc / lower[j][j])
        lower.append(row)
    return lower


def _tril_inverse(lower: list[list[jnp.ndarray]]) -> jnp.ndarray:
    """``L⁻¹`` ``(..., F, F)`` by unrolled forward substitution (``L⁻¹`` is lower triangular)."""
    f = len(lower)
    zero = jnp.zeros_like(lower[0][0])
    inv = [[zero] * f for _ in range(f)]
    for j in range(f):
        inv[j][j] = 1.0 / lower[j][j]
        for i in range(j + 1, f):
            acc = zero
            for k in range(j, i):
                acc = acc + lower[i][k] * inv[k][j]
            inv[i][j] = -acc / lower[i][i]
    return jnp.stack([jnp.stack(row, axis=-1) for row in inv], axis=-2)


@jax.custom_vjp
def _quad_logdet(corr: jnp.ndarray, rhs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(rhsᵀ R⁻¹ rhs, log det R)`` for ``R = corr`` ``(..., F, F)`` SPD, ``rhs`` ``(..., F)``.

    The gradient is analytic (custom VJP), ``∂q/∂rhs = 2w``, ``∂q/∂R = −w wᵀ``,
    ``∂ log det R/∂R = R⁻¹`` with ``w = R⁻¹ rhs``: much smaller than differentiating the
    unrolled factorisation.
    """
    return _quad_logdet_fwd(corr, rhs)[0]


def _quad_logdet_fwd(corr, rhs):
    lower = _cholesky_rows(corr)
    inv = _tril_inverse(lower)
    z = jnp.einsum("...ij,...j->...i", inv, rhs)
    logdet = 2.0 * sum(jnp.log(lower[i][i]) for i in range(len(lower)))
    return ((z**2).sum(axis=-1), logdet), (inv, z)


def _quad_logdet_bwd(saved, cotangents):
    inv, z = saved
    g_quad, g_logdet = cotangents
    w = jnp.einsum("...ki,...k->...i", inv, z)  # R⁻¹ rhs = L⁻ᵀ z
    r_inv = jnp.einsum("...ki,...kj->...ij", inv, inv)
    g_corr = g_logdet[..., None, None] * r_inv - g_quad[..., None, None] * w[..., :, None] * w[..., None, :]
    return g_corr, 2.0 * g_quad[..., None] * w


_quad_logdet.defvjp(_quad_logdet_fwd, _quad_logdet_bwd)


def _whitened_terms(residual: jnp.ndarray, cov: jnp.ndarray, jitter: float):
    """``(rᵀΣ⁻¹r, log det Σ, mean diag Σ)`` per pixel, each ``(B, H, W)``.

    Σ is first scaled to a correlation matrix ``R = S⁻¹ΣS⁻¹`` (``S = diag(Σ)^½``) so that frames of
    very different variance do not ruin the float32 Cholesky; ``jitter`` is added to ``R``'s unit
    diagonal (i.e. relative to each variance): ``log det Σ = log det R + Σ_k log Σ_kk``.
    """
    f = cov.shape[-1]
    diag = jnp.diagonal(cov, axis1=-2, axis2=-1)  # (B, H, W, F)
    scale = jnp.sqrt(diag)
    eye = jnp.eye(f, dtype=cov.dtype).reshape((1,) * (cov.ndim - 2) + (f, f))
    corr = cov / (scale[..., :, None] * scale[..., None, :]) + jitter * eye
    quad, logdet_corr = _quad_logdet(corr, jnp.moveaxis(residual, 1, -1) / scale)
    return quad, logdet_corr + jnp.log(diag).sum(-1), diag.mean(axis=-1)


def frame_gaussian_nll_map(
    residual: jnp.ndarray, cov: jnp.ndarray, *, jitter: float = 1e-5, include_const: bool = False
) -> jnp.ndarray:
    """Per-pixel F-dimensional Gaussian NLL ``0.5·(rᵀΣ⁻¹r + log det Σ) [+ F/2·log 2π]``, ``(B, H, W)``.

    residual : ``(B, F, H, W)`` (``x − rec``); cov : ``(B, H, W, F, F)``, positive definite (floor
    it upstream). Unrolled Cholesky of the correlation matrix with relative ``jitter`` (see
    :func:`frame_gaussian_nll`). Its expectation under ``r ~ N(0, Σ)`` is
    ``0.5·(F + log det Σ) [+ F/2·log 2π]``.
    """
    quad, logdet, _ = _whitened_terms(residual, cov, jitter)
    nll = 0.5 * (quad + logdet)
    return nll + 0.5 * cov.shape[-1] * _LOG_2PI if include_const else nll


def frame_gaussian_nll(
    residual: jnp.ndarray,
    cov: jnp.ndarray,
    *,
    beta: float = 0.0,
    jitter: float = 1e-5,
    mask: jnp.ndarray | None = None,
    include_const: bool = False,
) -> jnp.ndarray:
    """(β-)NLL of the residual under the cross-frame covariance, averaged per frame and pixel.

    Per camera pixel ``ℓ(i) = sg(tr Σ(i)/F)^β · 0.5·(rᵀΣ⁻¹r + log det Σ) / F``; the result is the
    (masked) mean of ``ℓ`` over pixels. Dividing by ``F`` makes it equal to
    :func:`simuq_core.training.losses.gaussian_nll` when ``Σ`` is diagonal and ``β = 0`` (same scale as the
    per-frame loss, so learning rates and logged values stay comparable).

    β-NLL analogue: the per-frame loss weights each frame-pixel by ``sg(v_k)^β``; with a full ``Σ``
    the terms do not separate by frame, so one weight per pixel multiplies the whole F-dimensional
    term: ``sg(mean_k Σ_kk)^β`` (the per-frame weight when all frames share one variance; a
    rotation-invariant scale that, unlike ``det Σ^{β/F}``, does not collapse when Σ is nearly
    singular). Like β-NLL it rescales each pixel's gradient and leaves the optimum unchanged.

    Stability: Σ is normalised to a correlation matrix before the Cholesky and ``jitter`` (1e-5)
    is added to its unit diagonal, i.e. relative to each frame's variance; in float32 this keeps
    the factorisation finite for correlations up to ``1 − jitter``. residual ``(B, F, H, W)``,
    cov ``(B, H, W, F, F)``, mask ``(B, H, W)`` (optional keep-mask).
    """
    quad, logdet, mean_var = _whitened_terms(residual, cov, jitter)
    f = cov.shape[-1]
    per_pixel = 0.5 * (quad + logdet) / f
    if include_const:
        per_pixel = per_pixel + 0.5 * _LOG_2PI
    if beta != 0.0:
        per_pixel = jax.lax.stop_gradient(mean_var) ** beta * per_pixel
    if mask is None:
        return per_pixel.mean()
    m = jnp.asarray(mask, per_pixel.dtype)
    return (m * per_pixel).sum() / jnp.maximum(m.sum(), jnp.finfo(per_pixel.dtype).tiny)
