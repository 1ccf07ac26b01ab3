"""The cross-frame covariance for the parametric light pattern ``1 + m cos θ``: the fast path of
the training objective (:func:`parametric_residual_covariance`).

It returns the numbers of :func:`simuq_core.uncertainty.frame_covariance.residual_covariance`
with the coherent per-angle errors of
:func:`simuq_core.uncertainty.frame_covariance.pattern_jacobian` (up to float round-off; tested),
but never forms a per-pair or per-parameter map: ``μl_k μl_j + C_kj`` is a fixed combination of 32
trigonometric maps, so the ``D`` term needs 32 convolutions combined on the LR grid instead of 45
pair maps, and the coherent terms are quadratic forms in 6 maps per angle
(``μe·{cos ψ_a, sin ψ_a}·{1, 2πy, 2πx}``), not 12 Jacobian maps; every pattern map is built from
1-D cosines (see the comment below ``__all__``). Small axes (angles, phases, parameters) are
explicit sums, not ``einsum`` contractions, and the pattern maps are stored once, not recomputed
in every XLA fusion that reads them.

Shapes as in :mod:`simuq_core.uncertainty.frame_covariance`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simuq_core.optics.imaging import box_mean_full, merged_psf_box_kernel
from simuq_core.pattern.estimate import PatternEstimate
from simuq_core.uncertainty.frame_pairs import (
    add_same_angle,
    frame_pairs,
    pair_products,
    with_noise_diagonal,
)
from simuq_core.uncertainty.lr_convolution import (
    LRSampler,
    independent_kernel,
    per_sample,
    psf_terms_enabled,
)

__all__ = ["parametric_residual_covariance"]

# For l_k = 1 + m_a cos θ_k, θ_k = ψ_a + δ_p (ψ_a = 2π k_a·(x − x_c) + φ_a, δ_p = 2πp/P), every
# pixel map the covariance needs is a fixed combination of a few maps of x that do not depend on
# the learned quantities (m, the variances): with w_a = e^{iψ_a},
#   μl_k μl_j + C_kj = Σ_b c_kj,b·T_b(x),  T = {1, Re/Im w_a, Re/Im w_a², Re/Im w_a w_b,
#                                               Re/Im w_a w̄_b, ρ², ρ²·Re/Im w_a²}   (32 maps)
# (ρ² = 4π²|x − x_c|², from the wave-vector error) by cos θ_k cos θ_j = ½Re(z_k z_j + z_k z̄_j),
# sin θ_k sin θ_j = ½Re(z_k z̄_j − z_k z_j), z_k = e^{iδ_p} w_a. So G² ⊛ D_kj = Σ_b c_kj,b·(G² ⊛ v_e T_b):
# 32 convolutions instead of 45, combined on the LR grid, and no (B, 45, Hh, Wh) map is formed.
# The coherent terms are quadratic forms in μe·{cos ψ_a, sin ψ_a}·{1, 2πy, 2πx} (their box means
# or blurs), 6 products per angle. All maps are separable, cos(α(y) + β(x)) = outer products of
# 1-D cosines and sines, so XLA may recompute them inside every fusion at little cost.

_N_LP_TERMS = 6  # per-angle quadratic terms of the coherent LP errors (see _coherent_products)


def _pattern_axes(pattern: PatternEstimate, shape_lr: tuple[int, int], r: int):
    """1-D coordinates of :func:`simuq_core.pattern.maps.pattern_maps`: ``y`` ``(B, Hh)``, ``x``
    ``(B, Wh)`` (LR pixels from the image centre minus ``origin``) and the phase arguments
    ``2π k_y y + φ`` ``(B, A, Hh)``, ``2π k_x x`` ``(B, A, Wh)``."""
    h, w = shape_lr
    b, a = pattern.phase.shape
    origin = pattern.origin.reshape(b, 2)
    y = ((jnp.arange(h * r, dtype=jnp.float32) + 0.5) / r - h / 2.0).reshape(1, -1) - origin[:, :1]
    x = ((jnp.arange(w * r, dtype=jnp.float32) + 0.5) / r - w / 2.0).reshape(1, -1) - origin[:, 1:]
    arg_y = 2.0 * jnp.pi * pattern.k[..., 0].reshape(b, a, 1) * y[:, None] + pattern.phase[..., None]
    arg_x = 2.0 * jnp.pi * pattern.k[..., 1].reshape(b, a, 1) * x[:, None]
    return y, x, arg_y, arg_x


def _cis_maps(arg_y: jnp.ndarray, arg_x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``cos`` and ``sin`` of ``arg_y(y) + arg_x(x)``: ``(B, n, Hh)``, ``(B, n, Wh)`` ->
    ``(B, n, Hh, Wh)`` each, from 1-D cosines and sines.

    Written as contractions over a length-2 axis (``cos = [c_y, s_y]·[c_x, −s_x]``): XLA keeps a
    ``dot`` as its own stored result, whereas an elementwise outer product gets fused into every
    consumer with its ``cos``/``sin`` recomputed per pixel (measured: ~10 % of the loss time).
    """
    cy, sy, cx, sx = jnp.cos(arg_y), jnp.sin(arg_y), jnp.cos(arg_x), jnp.sin(arg_x)
    cos = jnp.einsum("bnyk,bnxk->bnyx", jnp.stack([cy, sy], -1), jnp.stack([cx, -sx], -1))
    sin = jnp.einsum("bnyk,bnxk->bnyx", jnp.stack([sy, cy], -1), jnp.stack([cx, sx], -1))
    return cos, sin


def _angle_pairs(n_angles: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(n_angles) for b in range(a + 1, n_angles)]


def _trig_basis(y, x, arg_y, arg_x) -> jnp.ndarray:
    """The maps ``T`` ``(B, 1 + 8A + ... , Hh, Wh)`` of the module comment, in the order of
    :func:`_trig_coefficients`: 1; per angle Re w, Im w, Re w², Im w²; per angle pair Re w_a w_b,
    Im w_a w_b, Re w_a w̄_b, Im w_a w̄_b; ρ²; per angle ρ² Re w², ρ² Im w²."""
    n_angles = arg_y.shape[1]
    pairs = _angle_pairs(n_angles)
    ia, ib = [p[0] for p in pairs], [p[1] for p in pairs]
    cos1, sin1 = _cis_maps(arg_y, arg_x)
    cos2, sin2 = _cis_maps(2.0 * arg_y, 2.0 * arg_x)
    cos_p, sin_p = _cis_maps(arg_y[:, ia] + arg_y[:, ib], arg_x[:, ia] + arg_x[:, ib])
    cos_m, sin_m = _cis_maps(arg_y[:, ia] - arg_y[:, ib], arg_x[:, ia] - arg_x[:, ib])
    rho2 = 4.0 * jnp.pi**2 * (y[:, :, None] ** 2 + x[:, None, :] ** 2)  # (B, Hh, Wh)
    one = jnp.ones_like(rho2)[:, None]
    per_angle = jnp.stack([cos1, sin1, cos2, sin2], axis=2).reshape(cos1.shape[:1] + (-1,)
                                                                    + cos1.shape[2:])
    per_pair = jnp.stack([cos_p, sin_p, cos_m, sin_m], axis=2).reshape(cos1.shape[:1] + (-1,)
                                                                       + cos1.shape[2:])
    rho_terms = (rho2[:, None, None] * jnp.stack([cos2, sin2], axis=2)).reshape(
        cos1.shape[:1] + (-1,) + cos1.shape[2:])
    return jnp.concatenate([one, per_angle, per_pair, rho2[:, None], rho_terms], axis=1)


def _trig_coefficients(n_angles: int, n_phases: int) -> np.ndarray:
    """Static ``(n_scalars, n_pairs, n_T)``: ``c_kj,b = Σ_t s_t·const[t, kj, b]`` with the learned
    scalars ``s`` of :func:`_trig_scalars` (1; per angle m, m², v_φ m², v_m, v_k m²; per angle pair
    m_a m_b) and the pairs of :func:`frame_pairs` (module comment above for the identities)."""
    a_n, p_n = n_angles, n_phases
    pairs = _angle_pairs(a_n)
    one, m1, m2, vphi, vm, vk = 0, 1, 1 + a_n, 1 + 2 * a_n, 1 + 3 * a_n, 1 + 4 * a_n
    mm = 1 + 5 * a_n
    n_scalars = mm + len(pairs)
    t_ang = 1  # Re w, Im w, Re w², Im w² of angle a at t_ang + 4a + (0..3)
    t_pair = 1 + 4 * a_n
    t_rho = t_pair + 4 * len(pairs)
    n_t = t_rho + 1 + 2 * a_n
    rows, cols, _ = frame_pairs(a_n, p_n)
    const = np.zeros((n_scalars, rows.size, n_t))
    delta = 2.0 * np.pi * np.arange(p_n) / p_n
    for i, (k, j) in enumerate(zip(rows, cols, strict=True)):
        a, p, b, s = k // p_n, delta[k % p_n], j // p_n, delta[j % p_n]
        const[one, i, 0] = 1.0
        const[m1 + a, i, t_ang + 4 * a] += np.cos(p)
        const[m1 + a, i, t_ang + 4 * a + 1] -= np.sin(p)
        const[m1 + b, i, t_ang + 4 * b] += np.cos(s)
        const[m1 + b, i, t_ang + 4 * b + 1] -= np.sin(s)
        cd, cs, ss = np.cos(p - s), np.cos(p + s), np.sin(p + s)
        if a == b:
            # m²cosθcosθ + v_m cosθcosθ + (v_φ m² + v_k m² ρ²) sinθ sinθ, θ = ψ_a + δ
            for scalar, sign in ((m2 + a, 1.0), (vm + a, 1.0), (vphi + a, -1.0)):
                const[scalar, i, 0] += 0.5 * cd
                const[scalar, i, t_ang + 4 * a + 2] += 0.5 * sign * cs
                const[scalar, i, t_ang + 4 * a + 3] -= 0.5 * sign * ss
            const[vk + a, i, t_rho] += 0.5 * cd
            const[vk + a, i, t_rho + 1 + 2 * a] -= 0.5 * cs
            const[vk + a, i, t_rho + 2 + 2 * a] += 0.5 * ss
        else:
            q = t_pair + 4 * pairs.index((a, b))
            dm = np.sin(p - s)
            const[mm + pairs.index((a, b)), i, q : q + 4] = 0.5 * np.array([cs, -ss, cd, -dm])
    return const


def _trig_scalars(m_mean: jnp.ndarray, m: jnp.ndarray, var_phase: jnp.ndarray,
                  var_modulation: jnp.ndarray, var_k: jnp.ndarray) -> jnp.ndarray:
    """The scalars of :func:`_trig_coefficients`, ``(B, n_scalars)``; ``m_mean`` is the modulation
    of the mean pattern (stop-gradient under ``detach_mean_in_var``), ``m`` that of the errors."""
    pairs = _angle_pairs(m.shape[1])
    mm = jnp.stack([m_mean[:, a] * m_mean[:, b] for a, b in pairs], axis=1)
    return jnp.concatenate([jnp.ones_like(m[:, :1]), m_mean, m_mean**2, var_phase * m**2,
                            var_modulation, var_k * m**2, mm], axis=1)


def _error_basis(y, x, arg_y, arg_x) -> jnp.ndarray:
    """``{cos ψ_a, sin ψ_a}·{1, 2πy, 2πx}``, ``(B, A, 6, Hh, Wh)``: every column of
    :func:`~simuq_core.uncertainty.frame_covariance.pattern_jacobian` is a per-frame combination of
    these (:func:`_coherent_coefficients`)."""
    cos, sin = _cis_maps(arg_y, arg_x)
    ty = 2.0 * jnp.pi * y[:, None, :, None]
    tx = 2.0 * jnp.pi * x[:, None, None, :]
    return jnp.stack([cos, sin, ty * cos, ty * sin, tx * cos, tx * sin], axis=2)


def _coherent_products(maps: jnp.ndarray) -> jnp.ndarray:
    """``(B, A, 6, ...)`` maps ``X`` of the basis ``[c, s, yc, ys, xc, xs]`` -> the 6 quadratic
    terms ``[X_c², X_c X_s, X_s², X_yc² + X_xc², X_yc X_ys + X_xc X_xs, X_ys² + X_xs²]`` (the two
    wave-vector components share one variance)."""
    c, s, yc, ys, xc, xs = (maps[:, :, i] for i in range(6))
    return jnp.stack([c * c, c * s, s * s, yc * yc + xc * xc, yc * ys + xc * xs, ys * ys + xs * xs],
                     axis=2)


def _coherent_coefficients(m: jnp.ndarray, var_phase: jnp.ndarray, var_modulation: jnp.ndarray,
                           var_k: jnp.ndarray, n_phases: int) -> jnp.ndarray:
    """``Σ_q L_{q,p} L_{q,s}`` as a combination of :func:`_coherent_products`: ``(B, A, P(P+1)/2, 6)``
    for the same-angle pairs ``p ≤ s``.

    With ``γ = cos δ``, ``σ = sin δ``: phase ``−m(σ c + γ s)``, modulation ``γ c − σ s``,
    wave vector ``−m(σ c + γ s)·2π{y, x}`` give ``[v_φm²σσ' + v_mγγ', (v_φm² − v_m)(σγ' + γσ'),
    v_φm²γγ' + v_mσσ', v_k m²σσ', v_k m²(σγ' + γσ'), v_k m²γγ']``.
    """
    delta = 2.0 * np.pi * np.arange(n_phases) / n_phases
    p_idx, s_idx = np.triu_indices(n_phases)
    g_p, s_p, g_s, s_s = (np.cos(delta[p_idx]), np.sin(delta[p_idx]), np.cos(delta[s_idx]),
                          np.sin(delta[s_idx]))
    ss, gg, sg = s_p * s_s, g_p * g_s, s_p * g_s + g_p * s_s

    def c(v):
        return jnp.asarray(v, jnp.float32).reshape(1, 1, -1)

    phase, mod, wave = ((var_phase * m**2)[..., None], var_modulation[..., None],
                        (var_k * m**2)[..., None])
    return jnp.stack([phase * c(ss) + mod * c(gg), (phase - mod) * c(sg), phase * c(gg) + mod * c(ss),
                      wave * c(ss), wave * c(sg), wave * c(gg)], axis=-1)


def _coherent_pairs(maps: jnp.ndarray, coef: jnp.ndarray) -> jnp.ndarray:
    """Same-angle pair maps ``(B, A·P(P+1)/2, ...)`` of the quadratic form ``coef`` (from
    :func:`_coherent_coefficients`) in the basis maps ``(B, A, 6, ...)``."""
    prods = _coherent_products(maps)
    c = coef.reshape(coef.shape + (1,) * (maps.ndim - 3))
    out = sum(c[:, :, :, t] * prods[:, :, None, t] for t in range(_N_LP_TERMS))
    return out.reshape((out.shape[0], -1) + out.shape[3:])


def _independent_pairs(var_emitter: jnp.ndarray, axes, kernel: jnp.ndarray, scalars: jnp.ndarray,
                       n_angles: int, n_phases: int, lr: LRSampler, dtype) -> jnp.ndarray:
    """The pixel-independent term ``Σ_b c_kj,b (K_D ⊛ v_e T_b)`` on the LR grid,
    ``(B, n_pairs, H, W)``: the 32 maps ``v_e·T_b`` convolved once with ``kernel`` (``K_D``,
    :func:`~simuq_core.uncertainty.lr_convolution.independent_kernel`) and combined with the
    coefficients of the learned ``scalars`` (:func:`_trig_scalars`)."""
    blurred = lr.to_lr(lr.filtered(var_emitter[:, None] * _trig_basis(*axes),
                                   per_sample(kernel)))  # (B, n_T, H, W)
    coef = jnp.einsum("bs,spt->bpt", scalars,
                      jnp.asarray(_trig_coefficients(n_angles, n_phases), dtype))
    return jnp.einsum("bpt,bthw->bphw", coef, blurred)


def _box_mean_signal(box_e: jnp.ndarray, box_basis: jnp.ndarray, m_mean: jnp.ndarray,
                     n_phases: int) -> jnp.ndarray:
    """``B(μS_k)`` ``(B, F, Hh+r-1, Wh+r-1)`` of ``μS_k = μe·(1 + m cos(ψ_a + δ_p))`` from the box
    means of ``μe`` and of ``μe·{cos ψ_a, sin ψ_a}`` (the first two basis maps):
    ``cos(ψ + δ) = cos δ·cos ψ − sin δ·sin ψ``."""
    delta = 2.0 * np.pi * np.arange(n_phases) / n_phases
    c_d = jnp.asarray(np.cos(delta), box_e.dtype).reshape(1, 1, -1, 1, 1)
    s_d = jnp.asarray(np.sin(delta), box_e.dtype).reshape(1, 1, -1, 1, 1)
    box_s = box_e[:, None, None] + m_mean[..., None, None, None] * (
        c_d * box_basis[:, :, :1] - s_d * box_basis[:, :, 1:2])  # (B, A, P, ...)
    return box_s.reshape((box_s.shape[0], -1) + box_s.shape[3:])


def _psf_pairs(mu_e: jnp.ndarray, basis: jnp.ndarray, m_mean: jnp.ndarray, coherent: jnp.ndarray,
               var_psf: jnp.ndarray, psf_var_weight: float | jnp.ndarray, n_phases: int,
               lr: LRSampler) -> jnp.ndarray:
    """The PSF term ``v_p ⊛ (B(μS_k) B(μS_j) + Σ_q B(A_q,k) B(A_q,j))`` on the LR grid,
    ``(B, n_pairs, H, W)``, all from box means of ``μe·basis``."""
    rows, cols, n_same = frame_pairs(m_mean.shape[1], n_phases)
    box_e = box_mean_full(mu_e, lr.r)
    box_basis = box_mean_full(mu_e[:, None, None] * basis, lr.r)  # (B, A, 6, Hh+r-1, Wh+r-1)
    box_s = _box_mean_signal(box_e, box_basis, m_mean, n_phases)
    source = add_same_angle(pair_products(box_s, rows, cols),
                            _coherent_pairs(box_basis, coherent), n_same)
    return lr.to_lr(lr.filtered(source, per_sample(psf_var_weight * var_psf)))


def parametric_residual_covariance(
    emitter: jnp.ndarray,
    pattern: PatternEstimate,
    modulation: jnp.ndarray,
    psf: jnp.ndarray,
    r: int,
    *,
    n_phases: int,
    var_emitter: jnp.ndarray | None = None,
    var_phase: jnp.ndarray | None = None,
    var_modulation: jnp.ndarray | None = None,
    var_k: jnp.ndarray | None = None,
    var_psf: jnp.ndarray | None = None,
    psf_var_weight: float | jnp.ndarray = 1.0,
    var_obs: jnp.ndarray | None = None,
    var_floor: float = 0.0,
    detach_mean_in_var: bool = False,
) -> jnp.ndarray:
    """:func:`~simuq_core.uncertainty.frame_covariance.residual_covariance` for the parametric
    light pattern ``l = pattern_maps(pattern, modulation, ...)`` with the coherent per-angle errors
    of :func:`~simuq_core.uncertainty.frame_covariance.pattern_jacobian` (the same numbers up to
    float round-off; tested), computed through the fixed trigonometric maps of the comment above:
    the training objective's path.

    emitter, var_emitter : ``(B, Hh, Wh)``; pattern : ``k`` ``(B, A, 2)``, ``phase`` ``(B, A)``,
    ``origin`` ``(B, 2)``; modulation and the parameter variances (phase, modulation, isotropic
    wave vector; ``None`` = 0) ``(B, A)``; psf, var_psf : ``(B, K, K)`` or ``(K, K)``; var_obs
    ``(B, F, H, W)`` / ``(B, 1, H, W)``. Returns ``(B, H, W, F, F)``.
    """
    sg = jax.lax.stop_gradient if detach_mean_in_var else (lambda x: x)
    mu_e, mu_p, m_mean = sg(emitter), sg(psf), sg(modulation)
    bsz, hh, wh = mu_e.shape
    n_angles = modulation.shape[1]
    f = n_angles * n_phases
    h, w, k = hh // r, wh // r, mu_p.shape[-1]
    rows, cols, n_same = frame_pairs(n_angles, n_phases)
    zero = jnp.zeros_like(modulation)
    var_phase, var_modulation, var_k = (zero if v is None else v
                                        for v in (var_phase, var_modulation, var_k))
    use_psf = psf_terms_enabled(var_psf, psf_var_weight)
    lr = LRSampler.for_image(hh, wh, k, r)

    axes = _pattern_axes(pattern, (h, w), r)
    basis = _error_basis(*axes)  # (B, A, 6, Hh, Wh)
    coherent = _coherent_coefficients(modulation, var_phase, var_modulation, var_k, n_phases)
    g = merged_psf_box_kernel(mu_p, r)

    pairs = jnp.zeros((bsz, rows.size, h, w), mu_e.dtype)
    if var_emitter is not None:
        # Σ_b c_kj,b (K_D ⊛ v_e T_b) with K_D = G² + w·B(v_p)/r² (the PSF term's B(D)/r² part).
        kernel = independent_kernel(g, var_psf, psf_var_weight, r, use_psf)
        scalars = _trig_scalars(m_mean, modulation, var_phase, var_modulation, var_k)
        pairs = pairs + _independent_pairs(var_emitter, axes, kernel, scalars, n_angles, n_phases,
                                           lr, mu_e.dtype)
    if use_psf:
        pairs = pairs + _psf_pairs(mu_e, basis, m_mean, coherent, var_psf, psf_var_weight,
                                   n_phases, lr)
    # Coherent LP errors through the blur: Σ_q (G ⊛ A_q)_k (G ⊛ A_q)_j.
    blurred_basis = lr.to_lr(lr.filtered(mu_e[:, None, None] * basis, per_sample(g, 2)))
    pairs = add_same_angle(pairs, _coherent_pairs(blurred_basis, coherent), n_same)
    return with_noise_diagonal(pairs, rows, cols, f, var_obs, var_floor)
