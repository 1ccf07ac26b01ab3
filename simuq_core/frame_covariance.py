"""Cross-frame covariance of the SIM residual and its F-dimensional Gaussian likelihood (issue 14).

The per-frame NLL (:func:`simuq_core.losses.gaussian_nll`) sees only ``Var(rec_k)`` per pixel, so
the split of that total between emitter variance and camera noise is not identified. Camera noise
is independent across the ``F`` frames, while an emitter error ``δ(m)`` enters every frame through
the pattern: at camera pixel ``i`` the residual ``x(i) − rec(i) ∈ R^F`` has the covariance

    ``Σ(i) = Σ_S(i) + w·Σ_p(i) + diag(σ²(i)) + floor·I``

built here for the forward model of :func:`simuq_core.physics.forward_model`
(``rec_k = conv_full(B(S_k), p)`` sampled on the LR grid, ``S_k = e·l_k``,
``B(x) = conv_full(x, ones(r, r))/r²``, ``G = merged_psf_box_kernel(p, r)``).

Error model (zero-mean errors, mutually independent, second moments only):

- emitter ``e(m) = μe(m) + δ(m)``, ``Var δ(m) = v_e(m)``, independent across HR pixels;
- light pattern ``l_k(m) = μl_k(m) + Σ_q J_{a,q,p}(m)·ε_{a,q} + η_k(m)`` (frame ``k = P·a + p``):
  ``ε_{a,q}`` are *per-angle* parameter errors (variance ``v_{a,q}``) shared by the ``P`` phases of
  angle ``a`` and independent across angles — coherent across pixels
  (:func:`pattern_jacobian` gives ``J`` for the parametric pattern: phase, ``k_y``, ``k_x``,
  modulation); ``η`` is optional independent per-pixel, per-frame noise (variance ``v_l``, the
  model of the free light pattern and of :func:`~simuq_core.uncertainty.propagate_rec_variance`);
- PSF taps ``p(t)`` independent with variance ``v_p(t)``, *one* kernel shared by every pixel and
  frame of a sample (DESIGN.md §4.3);
- camera noise independent across pixels and frames (variance ``σ²``, given).

With ``C_kj(m) = Σ_q J_{q,k}(m)J_{q,j}(m)·v_q + δ_kj·v_l,k(m)`` (same-angle pairs only for the first
sum), the per-pixel "independent" part ``D_kj(m) = v_e(m)·(μl_k μl_j + C_kj)(m) + μe(m)²·δ_kj·v_l,k(m)``
and the coherent factors ``A_{q,k}(m) = √v_q·μe(m)·J_{q,k}(m)``, exactly:

    ``Σ_S[k, j](i) = (G² ⊛ D_kj)(i) + Σ_q (G ⊛ A_{q,k})(i)·(G ⊛ A_{q,j})(i)``,
    ``Σ_p[k, j](i) = (v_p ⊛ E_kj)(i)``,
    ``E_kj = B(μS_k)·B(μS_j) + B(D_kj)/r² + Σ_q B(A_{q,k})·B(A_{q,j})``

(every ``⊛`` a full convolution sampled at ``r·i + r − 1 + K//2``, as the mean path). The diagonal
``Σ[k, k]`` with ``J = 0`` is exactly ``propagate_rec_variance(...).var_rec`` (tested). The
coherent LP term is rank ``Q`` per angle block and zero between angles.

Shapes: emitter ``(B, Hh, Wh)``; light pattern ``(B, F, Hh, Wh)`` with ``F = A·P`` angle-major;
PSF ``(B, K, K)`` or ``(K, K)``; residual ``(B, F, H, W)``; covariance ``(B, H, W, F, F)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from simuq_core.pattern import PatternEstimate, pattern_maps
from simuq_core.physics import box_mean_full, fft_convolve, fft_convolve_sum, merged_psf_box_kernel

__all__ = [
    "covariance_diagonal",
    "covariance_of_prediction",
    "frame_gaussian_nll",
    "frame_gaussian_nll_map",
    "pattern_jacobian",
    "residual_covariance",
]

_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# Frame-pair bookkeeping
# ----------------------------------------------------------------------------------------------


def _frame_pairs(n_angles: int, n_phases: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle frame pairs ``(k, j)``, ``k ≤ j``, and where each sits in a per-angle block.

    Returns ``rows, cols`` (``(F(F+1)/2,)``) and ``block`` (same length): the flat index
    ``P²·a + P·p + s`` into ``(A, P, P)`` for a same-angle pair, ``A·P²`` (a zero slot) otherwise.
    """
    f = n_angles * n_phases
    rows, cols = np.triu_indices(f)
    same = rows // n_phases == cols // n_phases
    block = np.where(same, (rows // n_phases) * n_phases**2 + (rows % n_phases) * n_phases
                     + cols % n_phases, n_angles * n_phases**2)
    return rows, cols, block


def _gather_blocks(blocks: jnp.ndarray, index: np.ndarray) -> jnp.ndarray:
    """``(B, A, P, P, ...) -> (B, n_pairs, ...)`` with zeros for pairs of different angles."""
    b, a, p = blocks.shape[:3]
    flat = blocks.reshape((b, a * p * p) + blocks.shape[4:])
    flat = jnp.concatenate([flat, jnp.zeros_like(flat[:, :1])], axis=1)
    return flat[:, index]


def _per_frame(kernel: jnp.ndarray, extra_axes: int = 1) -> jnp.ndarray:
    """A per-sample kernel ``(B, K, K)`` gets ``extra_axes`` unit axes after ``B``; ``(K, K)`` as is
    (``fft_convolve`` prepends axes to align ranks, which would pair ``B`` with a frame axis)."""
    if kernel.ndim == 2:
        return kernel
    return kernel.reshape(kernel.shape[:1] + (1,) * extra_axes + kernel.shape[1:])


def _sample_lr(full: jnp.ndarray, r: int, psf_size: int, h: int, w: int) -> jnp.ndarray:
    """Pixels ``r·i + r − 1 + K//2`` of a full convolution: the LR grid of the mean path
    (the convention of :func:`simuq_core.physics.pooled_full_convolve`)."""
    off = r - 1 + psf_size // 2
    return full[..., off : off + r * h : r, off : off + r * w : r]


def _pairs_to_matrix(pairs: jnp.ndarray, rows: np.ndarray, cols: np.ndarray, f: int) -> jnp.ndarray:
    """``(B, n_pairs, H, W)`` upper-triangle values -> symmetric ``(B, H, W, F, F)``."""
    vals = jnp.moveaxis(pairs, 1, -1)
    mat = jnp.zeros(vals.shape[:-1] + (f, f), vals.dtype)
    return mat.at[..., rows, cols].set(vals).at[..., cols, rows].set(vals)


# ----------------------------------------------------------------------------------------------
# Parametric-pattern Jacobian
# ----------------------------------------------------------------------------------------------


def pattern_jacobian(
    pattern: PatternEstimate,
    modulation: jax.Array,
    var_phase: jax.Array,
    var_modulation: jax.Array,
    var_k: jax.Array,
    n_phases: int,
    shape_lr: tuple[int, int],
    r: int,
) -> tuple[jax.Array, jax.Array]:
    """First-order error directions of :func:`simuq_core.pattern.pattern_maps` and their variances.

    For frame ``f = P·a + p`` with ``θ_f(x) = 2π k_a·(x − x_c) + φ_a + 2πp/P``:
    ``∂l_f/∂φ_a = −m_a sinθ_f``, ``∂l_f/∂k_a,y = −m_a sinθ_f·2π(y − y_c)``,
    ``∂l_f/∂k_a,x = −m_a sinθ_f·2π(x − x_c)``, ``∂l_f/∂m_a = cosθ_f`` — obtained here by forward-mode
    differentiation of ``pattern_maps`` itself, so the conventions cannot drift apart. The wave
    vector error is isotropic (both components variance ``v_k``), as in
    :func:`simuq_core.pattern.pattern_variance`, so ``Σ_q J_q²·v_q`` equals that per-pixel variance.

    pattern : the estimate (``k`` ``(B, A, 2)``, ``phase`` ``(B, A)``, ...); modulation and the
    variances ``(B, A)``. Returns ``jac`` ``(B, A, 4, P, r·H, r·W)`` (parameters ordered phase,
    ``k_y``, ``k_x``, modulation) and ``var`` ``(B, A, 4)``.
    """
    b, a = pattern.phase.shape
    h, w = shape_lr

    def maps(phase, k, m):
        est = PatternEstimate(k, phase, pattern.contrast, pattern.origin)
        return pattern_maps(est, m, n_phases, shape_lr, r)

    primal = (pattern.phase, pattern.k, modulation)
    zero = tuple(jnp.zeros_like(x) for x in primal)
    unit_k = jnp.zeros_like(pattern.k)
    tangents = (
        (jnp.ones_like(pattern.phase), zero[1], zero[2]),
        (zero[0], unit_k.at[..., 0].set(1.0), zero[2]),
        (zero[0], unit_k.at[..., 1].set(1.0), zero[2]),
        (zero[0], zero[1], jnp.ones_like(modulation)),
    )
    # One JVP per parameter kind moves that parameter of every angle at once; angle a's parameter
    # only touches angle a's frames, so the frames separate the angles again.
    cols = [jax.jvp(maps, primal, t)[1] for t in tangents]
    jac = jnp.stack(cols, axis=1).reshape(b, 4, a, n_phases, r * h, r * w).transpose(0, 2, 1, 3, 4, 5)
    var = jnp.stack([var_phase, var_k, var_k, var_modulation], axis=-1)
    return jac, var


# ----------------------------------------------------------------------------------------------
# Residual covariance
# ----------------------------------------------------------------------------------------------


def residual_covariance(
    emitter: jnp.ndarray,
    light_pattern: jnp.ndarray,
    psf: jnp.ndarray,
    r: int,
    *,
    n_angles: int = 3,
    var_emitter: jnp.ndarray | None = None,
    var_light_pattern: jnp.ndarray | None = None,
    lp_jacobian: jnp.ndarray | None = None,
    lp_param_var: jnp.ndarray | None = None,
    var_psf: jnp.ndarray | None = None,
    psf_var_weight: float | jnp.ndarray = 1.0,
    var_obs: jnp.ndarray | None = None,
    var_floor: float = 0.0,
    detach_mean_in_var: bool = False,
) -> jnp.ndarray:
    """Covariance across frames of the residual ``x − rec`` at every camera pixel (module docstring).

    Parameters
    ----------
    emitter : ``(B, Hh, Wh)`` mean; light_pattern : ``(B, F, Hh, Wh)`` mean, ``F = n_angles·P``;
    psf : ``(B, K, K)`` or ``(K, K)`` mean. r : pooling factor (static).
    var_emitter : ``(B, Hh, Wh)`` or ``None``.
    var_light_pattern : ``(B, F, Hh, Wh)`` independent per-pixel, per-frame LP variance, or ``None``.
    lp_jacobian, lp_param_var : ``(B, A, Q, P, Hh, Wh)`` and ``(B, A, Q)``, the coherent per-angle
        LP errors (e.g. :func:`pattern_jacobian`), or ``None``.
    var_psf : ``(B, K, K)`` / ``(K, K)`` or ``None``; psf_var_weight : weight of the PSF terms (a
        static 0 disables them, as in ``propagate_rec_variance``).
    var_obs : camera-noise variance ``(B, F, H, W)`` or ``(B, 1, H, W)`` (e.g.
        ``propagate_rec_variance(...).var_obs``) or ``None``; var_floor : added to the diagonal.
    detach_mean_in_var : stop the gradient of the means inside the covariance.

    Returns
    -------
    ``(B, H, W, F, F)``, symmetric; positive semi-definite up to FFT round-off before the noise
    diagonal and floor are added.
    """
    sg = jax.lax.stop_gradient if detach_mean_in_var else (lambda x: x)
    mu_e, mu_l, mu_p = sg(emitter), sg(light_pattern), sg(psf)
    bsz, f, hh, wh = mu_l.shape
    if f % n_angles:
        raise ValueError(f"{f} frames do not split into n_angles={n_angles} angles")
    n_phases = f // n_angles
    h, w, k = hh // r, wh // r, mu_p.shape[-1]
    rows, cols, block = _frame_pairs(n_angles, n_phases)
    use_psf = var_psf is not None and not (isinstance(psf_var_weight, (int, float))
                                           and psf_var_weight == 0)
    coherent = lp_jacobian is not None
    if coherent and lp_param_var is None:
        raise ValueError("lp_jacobian needs lp_param_var")

    # D_kj(m): the part of Cov(S_k(m), S_j(m')) that is diagonal in m (independent pixels).
    d_pairs = jnp.zeros((bsz, rows.size, hh, wh), mu_l.dtype)
    if var_emitter is not None:
        lp_pointwise = mu_l[:, rows] * mu_l[:, cols]
        if coherent:  # v_e · Cov(l_k(m), l_j(m)) from the shared parameter errors
            jac_blocks = jnp.einsum("baqphw,baq,baqshw->bapshw", lp_jacobian, lp_param_var,
                                    lp_jacobian)
            lp_pointwise = lp_pointwise + _gather_blocks(jac_blocks, block)
        d_pairs = d_pairs + var_emitter[:, None] * lp_pointwise
    if var_light_pattern is not None:
        second_e = mu_e**2 if var_emitter is None else mu_e**2 + var_emitter
        diag = jnp.asarray(rows == cols)
        d_pairs = d_pairs + jnp.where(diag.reshape(1, -1, 1, 1),
                                      second_e[:, None] * var_light_pattern[:, rows], 0.0)

    g = merged_psf_box_kernel(mu_p, r)
    spectra = [(d_pairs, _per_frame(g**2))]
    if use_psf:
        box_s = box_mean_full(mu_e[:, None] * mu_l, r)
        source = box_s[:, rows] * box_s[:, cols] + box_mean_full(d_pairs, r) / (r * r)
        if coherent:
            box_a = box_mean_full(mu_e[:, None, None, None] * lp_jacobian, r)
            source = source + _gather_blocks(
                jnp.einsum("baqphw,baq,baqshw->bapshw", box_a, lp_param_var, box_a), block)
        spectra.append((source, _per_frame(psf_var_weight * var_psf)))
    pairs = _sample_lr(fft_convolve_sum(spectra), r, k, h, w)

    if coherent:
        # Coherent LP errors: rank Q per angle block, Σ_q (G ⊛ A_q)_k (G ⊛ A_q)_j.
        factors = mu_e[:, None, None, None] * lp_jacobian * jnp.sqrt(lp_param_var)[..., None, None,
                                                                                     None]
        blurred = _sample_lr(fft_convolve(factors, _per_frame(g, 3), "full"), r, k, h, w)
        pairs = pairs + _gather_blocks(jnp.einsum("baqphw,baqshw->bapshw", blurred, blurred), block)

    cov = _pairs_to_matrix(pairs, rows, cols, f)
    noise = jnp.full((bsz, f, h, w), var_floor, cov.dtype)
    if var_obs is not None:
        noise = noise + var_obs
    eye = jnp.eye(f, dtype=cov.dtype).reshape((1, 1, 1, f, f))
    return cov + jnp.moveaxis(noise, 1, -1)[..., None] * eye


def covariance_diagonal(cov: jnp.ndarray) -> jnp.ndarray:
    """``(B, H, W, F, F) -> (B, F, H, W)``: the per-frame variances (``var_rec`` layout)."""
    return jnp.moveaxis(jnp.diagonal(cov, axis1=-2, axis2=-1), -1, 1)


# ----------------------------------------------------------------------------------------------
# F-dimensional Gaussian NLL
# ----------------------------------------------------------------------------------------------


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
    :func:`simuq_core.losses.gaussian_nll` when ``Σ`` is diagonal and ``β = 0`` (same scale as the
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


def covariance_of_prediction(pred: dict, n_angles: int, r: int, uq) -> jnp.ndarray:
    """:func:`residual_covariance` of a :func:`simuq_core.reconstruction.predict` output
    ``(B, H, W, F, F)``: its emitter, light-pattern (parametric: the coherent per-angle errors of
    ``pattern_logvar``, ordered phase, modulation, ``|k|``; free: per-pixel ``lp_var``) and PSF
    variances, and its camera-noise variance ``var_obs`` (which already holds the residual-aware
    map) on the diagonal; ``uq``: the :class:`~simuq_core.config.UQParams`."""
    jac = jac_var = var_lp = None
    if "pattern_logvar" in pred:
        v = jnp.exp(pred["pattern_logvar"])
        est = PatternEstimate(pred["pattern_k"], pred["pattern_phase"], pred["pattern_contrast"],
                              pred["pattern_origin"])
        b, f, hh, wh = pred["light_pattern"].shape
        jac, jac_var = pattern_jacobian(est, pred["pattern_modulation"], v[..., 0], v[..., 1],
                                        v[..., 2], f // n_angles, (hh // r, wh // r), r)
    elif "lp_var" in pred:
        var_lp = pred["lp_var"]
    return residual_covariance(
        pred["emitter"], pred["light_pattern"], pred["psf"], r, n_angles=n_angles,
        var_emitter=pred.get("emitter_var"), var_light_pattern=var_lp, lp_jacobian=jac,
        lp_param_var=jac_var, var_psf=pred.get("psf_var"), psf_var_weight=uq.psf_var_weight,
        var_obs=pred["var_obs"], var_floor=uq.var_floor, detach_mean_in_var=uq.detach_mean_in_var)
