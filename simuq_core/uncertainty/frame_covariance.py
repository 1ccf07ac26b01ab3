"""Cross-frame covariance of the SIM residual.

The per-frame NLL (:func:`simuq_core.training.losses.gaussian_nll`) sees only ``Var(rec_k)`` per pixel, so
the split of that total between emitter variance and camera noise is not identified. Camera noise
is independent across the ``F`` frames, while an emitter error ``δ(m)`` enters every frame through
the pattern: at camera pixel ``i`` the residual ``x(i) − rec(i) ∈ R^F`` has the covariance

    ``Σ(i) = Σ_S(i) + w·Σ_p(i) + diag(σ²(i)) + floor·I``

built here for the forward model of :func:`simuq_core.optics.imaging.forward_model`
(``rec_k = conv_full(B(S_k), p)`` sampled on the LR grid, ``S_k = e·l_k``,
``B(x) = conv_full(x, ones(r, r))/r²``, ``G = merged_psf_box_kernel(p, r)``).

Error model (zero-mean errors, mutually independent, second moments only):

- emitter ``e(m) = μe(m) + δ(m)``, ``Var δ(m) = v_e(m)``, independent across HR pixels;
- light pattern ``l_k(m) = μl_k(m) + Σ_q L_{q,k}(m)·ε_{a,q} + η_k(m)`` (frame ``k = P·a + p``,
  ``ε_{a,q}`` unit-variance *per-angle* parameter errors shared by the ``P`` phases of angle ``a``
  and independent across angles — coherent across pixels; ``L_{q,k} = √v_{a,q}·J_{q,k}`` with
  ``J`` the pattern's Jacobian, :func:`pattern_jacobian`);
  ``η`` is optional independent per-pixel, per-frame noise (variance ``v_l``, the model of the free
  light pattern and of :func:`~simuq_core.uncertainty.propagation.propagate_rec_variance`);
- PSF taps ``p(t)`` independent with variance ``v_p(t)``, *one* kernel shared by every pixel and
  frame of a sample (docs/design.md §4.3);
- camera noise independent across pixels and frames (variance ``σ²``, given).

With ``C_kj(m) = Σ_q L_{q,k}(m)L_{q,j}(m) + δ_kj·v_l,k(m)`` (same-angle pairs only for the first
sum), the per-pixel "independent" part ``D_kj(m) = v_e(m)·(μl_k μl_j + C_kj)(m) + μe(m)²·δ_kj·v_l,k(m)``
and the coherent factors ``A_{q,k}(m) = μe(m)·L_{q,k}(m)``, exactly:

    ``Σ_S[k, j](i) = (G² ⊛ D_kj)(i) + Σ_q (G ⊛ A_{q,k})(i)·(G ⊛ A_{q,j})(i)``,
    ``Σ_p[k, j](i) = (v_p ⊛ E_kj)(i)``,
    ``E_kj = B(μS_k)·B(μS_j) + B(D_kj)/r² + Σ_q B(A_{q,k})·B(A_{q,j})``

(every ``⊛`` a full convolution sampled at ``r·i + r − 1 + K//2``, as the mean path). The diagonal
``Σ[k, k]`` with ``L = 0`` is exactly ``propagate_rec_variance(...).var_rec`` (tested). The
coherent LP term is rank ``Q`` per angle block and zero between angles.

**How it is computed** (the same numbers as the term-by-term formulas above, up to float round-off;
``tests/test_frame_covariance.py`` keeps that naive construction as the reference): every term is
convolved and sampled on one small FFT grid (:mod:`simuq_core.uncertainty.lr_convolution`), the
upper triangle ``k ≤ j`` is stored as pair maps (:mod:`simuq_core.uncertainty.frame_pairs`), and
the parametric light pattern ``1 + m cos θ`` (what training uses) has its own path through fixed
trigonometric maps, :func:`simuq_core.uncertainty.parametric_covariance.parametric_residual_covariance`.
The F-dimensional likelihood of the residual under ``Σ`` is in
:mod:`simuq_core.uncertainty.frame_likelihood`.

Measured (``benchmarks/bench_frame_covariance.py``, loss + gradient, default geometry): 6.3× the
per-frame loss before, ~3.5× after.

Shapes: emitter ``(B, Hh, Wh)``; light pattern ``(B, F, Hh, Wh)`` with ``F = A·P`` angle-major;
PSF ``(B, K, K)`` or ``(K, K)``; residual ``(B, F, H, W)``; covariance ``(B, H, W, F, F)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simuq_core.optics.imaging import box_mean_full, merged_psf_box_kernel
from simuq_core.pattern.estimate import PatternEstimate
from simuq_core.pattern.maps import pattern_maps
from simuq_core.uncertainty.frame_pairs import (
    add_same_angle,
    frame_pairs,
    pair_products,
    same_angle_gram,
    same_angle_stack,
    with_noise_diagonal,
)
from simuq_core.uncertainty.lr_convolution import (
    LRSampler,
    independent_kernel,
    per_sample,
    psf_terms_enabled,
)
from simuq_core.uncertainty.parametric_covariance import parametric_residual_covariance

__all__ = [
    "covariance_diagonal",
    "covariance_of_prediction",
    "pattern_jacobian",
    "residual_covariance",
]


# ----------------------------------------------------------------------------------------------
# Coherent light-pattern errors
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
    """First-order error directions of :func:`simuq_core.pattern.maps.pattern_maps` and their variances.

    For frame ``f = P·a + p`` with ``θ_f(x) = 2π k_a·(x − x_c) + φ_a + 2πp/P``:
    ``∂l_f/∂φ_a = −m_a sinθ_f``, ``∂l_f/∂k_a,y = −m_a sinθ_f·2π(y − y_c)``,
    ``∂l_f/∂k_a,x = −m_a sinθ_f·2π(x − x_c)``, ``∂l_f/∂m_a = cosθ_f`` — obtained here by forward-mode
    differentiation of ``pattern_maps`` itself, so the conventions cannot drift apart. The wave
    vector error is isotropic (both components variance ``v_k``), as in
    :func:`simuq_core.pattern.maps.pattern_variance`, so ``Σ_q J_q²·v_q`` equals that per-pixel variance.

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


def _lp_errors(lp_jacobian: jnp.ndarray | None, lp_param_var: jnp.ndarray | None
               ) -> jnp.ndarray | None:
    """The coherent LP error directions ``L_{q,k} = √v_q J_{q,k}``, ``(B, A, Q, P, Hh, Wh)``, or
    ``None`` without a Jacobian."""
    if lp_jacobian is None:
        return None
    if lp_param_var is None:
        raise ValueError("lp_jacobian needs lp_param_var")
    return lp_jacobian * jnp.sqrt(lp_param_var)[..., None, None, None]


def _lp_noise_pairs(mu_e: jnp.ndarray, var_emitter: jnp.ndarray | None,
                    var_light_pattern: jnp.ndarray, n_angles: int, n_phases: int) -> jnp.ndarray:
    """The independent per-pixel LP noise in ``D``: ``E[e²]·v_l,k`` on the diagonal ``k = j``,
    zero elsewhere, as the same-angle pair maps ``(B, A·P(P+1)/2, Hh, Wh)``."""
    second_e = mu_e**2 if var_emitter is None else mu_e**2 + var_emitter
    diag = (second_e[:, None] * var_light_pattern).reshape(
        (mu_e.shape[0], n_angles, n_phases) + mu_e.shape[1:])
    zero = jnp.zeros_like(diag[:, :, 0])
    return same_angle_stack([diag[:, :, p] if p == s else zero
                             for p, s in zip(*np.triu_indices(n_phases), strict=True)])


def _independent_pairs(mu_e: jnp.ndarray, mu_l: jnp.ndarray, var_emitter: jnp.ndarray | None,
                       var_light_pattern: jnp.ndarray | None, lp_errors: jnp.ndarray | None,
                       n_angles: int) -> jnp.ndarray | None:
    """``D_kj(m)`` ``(B, n_pairs, Hh, Wh)``: the part of ``Cov(S_k(m), S_j(m'))`` that is diagonal
    in ``m`` (independent pixels); ``None`` without emitter or LP variance."""
    n_phases = mu_l.shape[1] // n_angles
    rows, cols, n_same = frame_pairs(n_angles, n_phases)
    d_pairs = None
    if var_emitter is not None:
        lp_pointwise = pair_products(mu_l, rows, cols)
        if lp_errors is not None:  # Cov(l_k(m), l_j(m)) from the shared parameter errors
            lp_pointwise = add_same_angle(lp_pointwise, same_angle_gram(lp_errors), n_same)
        d_pairs = var_emitter[:, None] * lp_pointwise
    if var_light_pattern is not None:
        on_diag = _lp_noise_pairs(mu_e, var_emitter, var_light_pattern, n_angles, n_phases)
        if d_pairs is None:
            cross = jnp.zeros((on_diag.shape[0], rows.size - n_same) + on_diag.shape[2:],
                              on_diag.dtype)
            d_pairs = jnp.concatenate([on_diag, cross], axis=1)
        else:
            d_pairs = add_same_angle(d_pairs, on_diag, n_same)
    return d_pairs


def _psf_source_pairs(mu_e: jnp.ndarray, mu_l: jnp.ndarray, lp_errors: jnp.ndarray | None,
                      n_angles: int, r: int) -> jnp.ndarray:
    """What the PSF variance convolves, ``B(μS_k)·B(μS_j) + Σ_q B(A_q,k)·B(A_q,j)``,
    ``(B, n_pairs, Hh+r-1, Wh+r-1)`` (``A_q = μe·L_q``)."""
    rows, cols, n_same = frame_pairs(n_angles, mu_l.shape[1] // n_angles)
    box_s = box_mean_full(mu_e[:, None] * mu_l, r)
    source = pair_products(box_s, rows, cols)
    if lp_errors is not None:
        box_a = box_mean_full(mu_e[:, None, None, None] * lp_errors, r)
        source = add_same_angle(source, same_angle_gram(box_a), n_same)
    return source


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
    h, w, k = hh // r, wh // r, mu_p.shape[-1]
    rows, cols, n_same = frame_pairs(n_angles, f // n_angles)
    use_psf = psf_terms_enabled(var_psf, psf_var_weight)
    lp_errors = _lp_errors(lp_jacobian, lp_param_var)  # (B, A, Q, P, Hh, Wh) or None
    lr = LRSampler.for_image(hh, wh, k, r)
    g = merged_psf_box_kernel(mu_p, r)

    spec = None
    d_pairs = _independent_pairs(mu_e, mu_l, var_emitter, var_light_pattern, lp_errors, n_angles)
    if d_pairs is not None:
        # G² ⊛ D plus the PSF term's v_p ⊛ B(D)/r² = (B(v_p)/r²) ⊛ D: one merged kernel.
        kernel = independent_kernel(g, var_psf, psf_var_weight, r, use_psf)
        spec = lr.filtered(d_pairs, per_sample(kernel))
    if use_psf:
        term = lr.filtered(_psf_source_pairs(mu_e, mu_l, lp_errors, n_angles, r),
                           per_sample(psf_var_weight * var_psf))
        spec = term if spec is None else spec + term
    pairs = (jnp.zeros((bsz, rows.size, h, w), mu_l.dtype) if spec is None else lr.to_lr(spec))

    if lp_errors is not None:
        # Coherent LP errors: rank Q per angle block, Σ_q (G ⊛ A_q)_k (G ⊛ A_q)_j.
        blurred = lr.to_lr(lr.filtered(mu_e[:, None, None, None] * lp_errors, per_sample(g, 3)))
        pairs = add_same_angle(pairs, same_angle_gram(blurred), n_same)
    return with_noise_diagonal(pairs, rows, cols, f, var_obs, var_floor)


def covariance_diagonal(cov: jnp.ndarray) -> jnp.ndarray:
    """``(B, H, W, F, F) -> (B, F, H, W)``: the per-frame variances (``var_rec`` layout)."""
    return jnp.moveaxis(jnp.diagonal(cov, axis1=-2, axis2=-1), -1, 1)


def covariance_of_prediction(pred: dict, n_angles: int, r: int, uq) -> jnp.ndarray:
    """:func:`residual_covariance` of a :func:`simuq_core.network.forward.predict` output
    ``(B, H, W, F, F)``: its emitter, light-pattern (parametric: the coherent per-angle errors of
    ``pattern_logvar``, ordered phase, modulation, ``|k|``, through
    :func:`~simuq_core.uncertainty.parametric_covariance.parametric_residual_covariance`; free:
    per-pixel ``lp_var``) and PSF variances, and its camera-noise variance ``var_obs`` (which
    already holds the residual-aware map) on the diagonal; ``uq``: the
    :class:`~simuq_core.config.UQParams`."""
    common = dict(var_emitter=pred.get("emitter_var"), var_psf=pred.get("psf_var"),
                  psf_var_weight=uq.psf_var_weight, var_obs=pred["var_obs"],
                  var_floor=uq.var_floor, detach_mean_in_var=uq.detach_mean_in_var)
    if "pattern_logvar" in pred:
        v = jnp.exp(pred["pattern_logvar"])
        est = PatternEstimate(pred["pattern_k"], pred["pattern_phase"], pred["pattern_contrast"],
                              pred["pattern_origin"])
        f = pred["light_pattern"].shape[1]
        return parametric_residual_covariance(
            pred["emitter"], est, pred["pattern_modulation"], pred["psf"], r,
            n_phases=f // n_angles, var_phase=v[..., 0], var_modulation=v[..., 1],
            var_k=v[..., 2], **common)
    return residual_covariance(pred["emitter"], pred["light_pattern"], pred["psf"], r,
                               n_angles=n_angles, var_light_pattern=pred.get("lp_var"), **common)
