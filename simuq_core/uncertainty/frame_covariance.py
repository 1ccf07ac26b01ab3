"""Cross-frame covariance of the SIM residual and its F-dimensional Gaussian likelihood.

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
``tests/test_frame_covariance.py`` keeps that naive construction as the reference):

- ``v_p ⊛ B(D)/r² = (B(v_p)/r²) ⊛ D``, so ``D_kj`` is convolved once with the merged kernel
  ``G² + w·B(v_p)/r²``; ``B(μS)B(μS) + Σ_q B(A)B(A)`` once with ``w·v_p``; the two spectra are added
  before one inverse FFT per frame pair.
- Only the LR samples of each full convolution are needed. Every convolution here has the same full
  length ``Hh + K + r − 2`` and LR offset, so one FFT grid ``N`` serves all: the smallest 2-3-5
  length, a multiple of ``r``, for which the circular wrap-around misses the sampled pixels
  (:func:`_lr_grid`: 80 instead of the linear 96 on the default geometry), and the inverse FFT is
  taken on the ``r``× decimated grid after folding the spectrum (sampling every ``r``-th pixel =
  summing the ``r²`` aliased spectral blocks; :func:`_decimated_irfft2`).
- The parametric light pattern ``1 + m cos θ`` (what training uses) has its own path,
  :func:`parametric_residual_covariance`: ``μl_k μl_j + C_kj`` is a fixed combination of 32
  trigonometric maps, so the ``D`` term needs 32 convolutions combined on the LR grid instead of 45
  pair maps, and the coherent terms are quadratic forms in 6 maps per angle
  (``μe·{cos ψ_a, sin ψ_a}·{1, 2πy, 2πx}``), not 12 Jacobian maps; every pattern map is built from
  1-D cosines (see the comment above that function).
- Small axes (angles, phases, parameters) are explicit sums, not ``einsum`` contractions, and the
  pattern maps are stored once, not recomputed in every XLA fusion that reads them.

Measured (``benchmarks/bench_frame_covariance.py``, loss + gradient, default geometry): 6.3× the
per-frame loss before, ~3.5× after.

Shapes: emitter ``(B, Hh, Wh)``; light pattern ``(B, F, Hh, Wh)`` with ``F = A·P`` angle-major;
PSF ``(B, K, K)`` or ``(K, K)``; residual ``(B, F, H, W)``; covariance ``(B, H, W, F, F)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simuq_core.optics.imaging import align_ranks, box_mean_full, merged_psf_box_kernel
from simuq_core.pattern.estimate import PatternEstimate, pattern_maps

__all__ = [
    "covariance_diagonal",
    "covariance_of_prediction",
    "frame_gaussian_nll",
    "frame_gaussian_nll_map",
    "parametric_residual_covariance",
    "pattern_jacobian",
    "residual_covariance",
]

_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# Frame-pair bookkeeping
# ----------------------------------------------------------------------------------------------


def _frame_pairs(n_angles: int, n_phases: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Frame pairs ``(k, j)``, ``k ≤ j``: the ``A·P(P+1)/2`` same-angle pairs first (angle-major,
    then the upper triangle of each ``P × P`` block), then the pairs of different angles.

    Returns ``rows, cols`` (``(F(F+1)/2,)``) and the number of same-angle pairs.
    """
    p_rows, p_cols = np.triu_indices(n_phases)
    same_r = np.concatenate([a * n_phases + p_rows for a in range(n_angles)])
    same_c = np.concatenate([a * n_phases + p_cols for a in range(n_angles)])
    rows, cols = np.triu_indices(n_angles * n_phases)
    cross = rows // n_phases != cols // n_phases
    return (np.concatenate([same_r, rows[cross]]), np.concatenate([same_c, cols[cross]]),
            same_r.size)


def _same_angle_stack(pair_maps: list[jnp.ndarray]) -> jnp.ndarray:
    """The ``P(P+1)/2`` same-angle pair maps ``(B, A, ...)`` (upper triangle of the ``P × P`` block,
    row-major) -> ``(B, A·P(P+1)/2, ...)`` in :func:`_frame_pairs` order."""
    stacked = jnp.stack(pair_maps, axis=2)
    return stacked.reshape((stacked.shape[0], -1) + stacked.shape[3:])


def _same_angle_gram(factors: jnp.ndarray) -> jnp.ndarray:
    """``Σ_q F[b, a, q, p]·F[b, a, q, s]`` for the same-angle pairs ``p ≤ s``:
    ``(B, A, Q, P, ...) -> (B, A·P(P+1)/2, ...)``.

    Written as explicit sums over the short axes: a ``sum(axis=...)`` followed by slicing made the
    gradient crash XLA's CPU runtime (segmentation fault, jaxlib 0.10.2).
    """
    n_q, n_p = factors.shape[2], factors.shape[3]
    return _same_angle_stack([
        sum(factors[:, :, q, p] * factors[:, :, q, s] for q in range(n_q))
        for p, s in zip(*np.triu_indices(n_p), strict=True)])


def _pair_products(x: jnp.ndarray, rows: np.ndarray, cols: np.ndarray) -> jnp.ndarray:
    """``x[:, k]·x[:, j]`` for every pair: ``(B, F, ...) -> (B, n_pairs, ...)``."""
    return x[:, rows] * x[:, cols]


def _pairs_to_matrix(pairs: jnp.ndarray, rows: np.ndarray, cols: np.ndarray, f: int) -> jnp.ndarray:
    """``(B, n_pairs, H, W)`` upper-triangle values -> symmetric ``(B, H, W, F, F)`` (a gather: each
    of the ``F²`` entries reads its pair)."""
    index = np.zeros((f, f), np.int64)
    index[rows, cols] = np.arange(rows.size)
    index[cols, rows] = np.arange(rows.size)
    vals = jnp.moveaxis(pairs, 1, -1)
    return vals[..., index.ravel()].reshape(vals.shape[:-1] + (f, f))


def _per_sample(kernel: jnp.ndarray, extra_axes: int = 1) -> jnp.ndarray:
    """A per-sample array ``(B, ...)`` gets ``extra_axes`` unit axes after ``B``; a shared kernel
    ``(K, K)`` (``ndim == 2``) is returned as is and broadcasts."""
    if kernel.ndim == 2:
        return kernel
    return kernel.reshape(kernel.shape[:1] + (1,) * extra_axes + kernel.shape[1:])


# ----------------------------------------------------------------------------------------------
# LR-sampled convolutions on one small FFT grid
# ----------------------------------------------------------------------------------------------


def _fast_length(n: int, multiple: int) -> int:
    """Smallest ``m ≥ n``, a multiple of ``multiple``, whose only prime factors are 2, 3 and 5."""
    m = max(n, multiple)
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1 and m % multiple == 0:
            return m
        m += 1


class _Grid(NamedTuple):
    """FFT length ``n`` of one axis, the zero-padding ``shift`` in front of every input, and the
    first sampled index ``start`` on the ``r``× decimated grid."""

    n: int
    shift: int
    start: int


def _lr_grid(full_len: int, offset: int, n_out: int, r: int, max_input: int) -> _Grid:
    """FFT grid of one axis for ``y = conv_full(x, k)`` (``full_len = len(x) + len(k) − 1``, the
    same for every pair convolved here) sampled at ``offset + r·i``, ``i < n_out``.

    Shifting every input by ``s = (−offset) mod r`` makes the sampled indices
    ``n_i = offset + s + r·i`` multiples of ``r``. The circular convolution of length ``N`` equals
    ``y`` at ``n_i`` when no other period of the shifted ``y`` (support ``[s, s + full_len − 1]``)
    reaches them: ``N > full_len − 1 − offset`` and ``N > offset + s + r·(n_out − 1)``; and every
    input must fit, ``N ≥ s + max_input``.
    """
    shift = (-offset) % r
    n = _fast_length(max(full_len - offset, offset + shift + r * (n_out - 1) + 1, shift + max_input), r)
    return _Grid(n, shift, (offset + shift) // r)


def _spectrum(x: jnp.ndarray, grid: tuple[_Grid, _Grid]) -> jnp.ndarray:
    """``rfft2`` of ``x`` ``(..., L0, L1)`` placed at ``(shift0, shift1)`` on the ``N0 × N1`` grid."""
    if any(g.shift for g in grid):
        pad = [(g.shift, g.n - g.shift - n) for g, n in zip(grid, x.shape[-2:], strict=True)]
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + pad)
    return jnp.fft.rfft2(x, s=(grid[0].n, grid[1].n))


def _filtered(x: jnp.ndarray, kernel: jnp.ndarray, grid: tuple[_Grid, _Grid]) -> jnp.ndarray:
    """Spectrum of ``conv_full(x, kernel)`` on the grid (the kernel at the origin, unshifted);
    the kernel's leading axes broadcast against ``x``'s (unit axes prepended explicitly)."""
    spec_k = jnp.fft.rfft2(kernel, s=(grid[0].n, grid[1].n))
    spec_k = spec_k.reshape((1,) * (x.ndim - kernel.ndim) + spec_k.shape)
    return _spectrum(x, grid) * spec_k


def _fold_rows(spec: jnp.ndarray, r: int) -> jnp.ndarray:
    """``(..., N, C) -> (..., N/r, C)``: ``Σ_t X[v + t·N/r, :]``."""
    n = spec.shape[-2]
    return spec.reshape(spec.shape[:-2] + (r, n // r, spec.shape[-1])).sum(axis=-3)


def _fold_half_columns(spec: jnp.ndarray, n: int, r: int) -> jnp.ndarray:
    """``Σ_t X[:, u + t·M]`` for ``u ≤ M//2`` (``M = n/r``) from the half spectrum of a real
    signal, ``(..., V, n//2 + 1) -> (..., V, M//2 + 1)``.

    Columns ``u > n/2`` are not stored: ``X[v, u] = conj(X[−v, n − u])`` (the row axis, already
    folded, is negated modulo its length). Static slices only, so the transpose is cheap too.
    """
    m, half = n // r, n // r // 2
    mirrored = jnp.conj(jnp.concatenate([spec[..., :1, :], jnp.flip(spec[..., 1:, :], axis=-2)],
                                        axis=-2))
    total = None
    for t in range(r):
        lo, hi = t * m, t * m + half  # the columns u + t·M, u = 0..M//2, inclusive
        pieces = []
        if lo <= min(hi, n // 2):
            pieces.append(spec[..., lo : min(hi, n // 2) + 1])
        first_mirrored = max(lo, n // 2 + 1)
        if first_mirrored <= hi:  # u in [first_mirrored, hi] reads n − u, descending
            pieces.append(jnp.flip(mirrored[..., n - hi : n - first_mirrored + 1], axis=-1))
        part = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1)
        total = part if total is None else total + part
    return total


def _decimated_irfft2(spec: jnp.ndarray, grid: tuple[_Grid, _Grid], r: int, out: tuple[int, int]
                      ) -> jnp.ndarray:
    """Samples ``c[r·i + start]`` (per axis) of the circular convolution whose ``rfft2`` is
    ``spec`` ``(..., N0, N1//2 + 1)``, ``(..., out0, out1)``.

    Sampling every ``r``-th pixel aliases the spectrum: ``c[r·i] = (1/r)·ifft_{N/r}(Σ_t X[u + t·N/r])``
    per axis, so the inverse FFT runs on the ``(N/r)²`` grid.
    """
    (g0, g1), m0, m1 = grid, grid[0].n // r, grid[1].n // r
    folded = _fold_half_columns(_fold_rows(spec, r), g1.n, r) / (r * r)
    small = jnp.fft.irfft2(folded, s=(m0, m1))
    return small[..., g0.start : g0.start + out[0], g1.start : g1.start + out[1]]


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
    """First-order error directions of :func:`simuq_core.pattern.estimate.pattern_maps` and their variances.

    For frame ``f = P·a + p`` with ``θ_f(x) = 2π k_a·(x − x_c) + φ_a + 2πp/P``:
    ``∂l_f/∂φ_a = −m_a sinθ_f``, ``∂l_f/∂k_a,y = −m_a sinθ_f·2π(y − y_c)``,
    ``∂l_f/∂k_a,x = −m_a sinθ_f·2π(x − x_c)``, ``∂l_f/∂m_a = cosθ_f`` — obtained here by forward-mode
    differentiation of ``pattern_maps`` itself, so the conventions cannot drift apart. The wave
    vector error is isotropic (both components variance ``v_k``), as in
    :func:`simuq_core.pattern.estimate.pattern_variance`, so ``Σ_q J_q²·v_q`` equals that per-pixel variance.

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
    rows, cols, n_same = _frame_pairs(n_angles, n_phases)
    use_psf = var_psf is not None and not (isinstance(psf_var_weight, (int, float))
                                           and psf_var_weight == 0)
    lp_errors = None  # L_{q,k} = √v_q J_{q,k}, (B, A, Q, P, Hh, Wh)
    if lp_jacobian is not None:
        if lp_param_var is None:
            raise ValueError("lp_jacobian needs lp_param_var")
        lp_errors = lp_jacobian * jnp.sqrt(lp_param_var)[..., None, None, None]
    # Every term is a full convolution of length Hh + K + r − 2 sampled at r·i + r − 1 + K//2.
    offset = r - 1 + k // 2
    grid = (_lr_grid(hh + k + r - 2, offset, h, r, hh + r - 1),
            _lr_grid(wh + k + r - 2, offset, w, r, wh + r - 1))

    def to_lr(spec):
        return _decimated_irfft2(spec, grid, r, (h, w))

    def add_same_angle(pairs, same):
        """Adds ``(B, n_same, ...)`` to the same-angle pairs (the first ``n_same``)."""
        return jnp.concatenate([pairs[:, :n_same] + same, pairs[:, n_same:]], axis=1)

    # D_kj(m): the part of Cov(S_k(m), S_j(m')) that is diagonal in m (independent pixels).
    d_pairs = None
    if var_emitter is not None:
        lp_pointwise = _pair_products(mu_l, rows, cols)
        if lp_errors is not None:  # Cov(l_k(m), l_j(m)) from the shared parameter errors
            lp_pointwise = add_same_angle(lp_pointwise, _same_angle_gram(lp_errors))
        d_pairs = var_emitter[:, None] * lp_pointwise
    if var_light_pattern is not None:
        second_e = mu_e**2 if var_emitter is None else mu_e**2 + var_emitter
        diag = (second_e[:, None] * var_light_pattern).reshape(bsz, n_angles, n_phases, hh, wh)
        zero = jnp.zeros_like(diag[:, :, 0])
        on_diag = _same_angle_stack([diag[:, :, p] if p == s else zero
                                     for p, s in zip(*np.triu_indices(n_phases), strict=True)])
        if d_pairs is None:
            d_pairs = jnp.concatenate(
                [on_diag, jnp.zeros((bsz, rows.size - n_same, hh, wh), on_diag.dtype)], axis=1)
        else:
            d_pairs = add_same_angle(d_pairs, on_diag)

    spec = None
    g = merged_psf_box_kernel(mu_p, r)
    if d_pairs is not None:
        # G² ⊛ D plus the PSF term's v_p ⊛ B(D)/r² = (B(v_p)/r²) ⊛ D: one merged kernel.
        kernel = g**2
        if use_psf:
            kernel, box_vp = align_ranks(kernel, box_mean_full(var_psf, r))
            kernel = kernel + psf_var_weight * box_vp / (r * r)
        spec = _filtered(d_pairs, _per_sample(kernel), grid)
    if use_psf:
        box_s = box_mean_full(mu_e[:, None] * mu_l, r)
        source = _pair_products(box_s, rows, cols)
        if lp_errors is not None:
            box_a = box_mean_full(mu_e[:, None, None, None] * lp_errors, r)
            source = add_same_angle(source, _same_angle_gram(box_a))
        term = _filtered(source, _per_sample(psf_var_weight * var_psf), grid)
        spec = term if spec is None else spec + term
    pairs = (jnp.zeros((bsz, rows.size, h, w), mu_l.dtype) if spec is None else to_lr(spec))

    if lp_errors is not None:
        # Coherent LP errors: rank Q per angle block, Σ_q (G ⊛ A_q)_k (G ⊛ A_q)_j.
        blurred = to_lr(_filtered(mu_e[:, None, None, None] * lp_errors, _per_sample(g, 3), grid))
        pairs = add_same_angle(pairs, _same_angle_gram(blurred))

    cov = _pairs_to_matrix(pairs, rows, cols, f)
    noise = jnp.full((bsz, f, h, w), var_floor, cov.dtype)
    if var_obs is not None:
        noise = noise + var_obs
    eye = jnp.eye(f, dtype=cov.dtype).reshape((1, 1, 1, f, f))
    return cov + jnp.moveaxis(noise, 1, -1)[..., None] * eye


# ----------------------------------------------------------------------------------------------
# Parametric light pattern: the fast path of the training objective
# ----------------------------------------------------------------------------------------------
#
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
    """1-D coordinates of :func:`simuq_core.pattern.estimate.pattern_maps`: ``y`` ``(B, Hh)``, ``x``
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
    m_a m_b) and the pairs of :func:`_frame_pairs` (module comment above for the identities)."""
    a_n, p_n = n_angles, n_phases
    pairs = _angle_pairs(a_n)
    one, m1, m2, vphi, vm, vk = 0, 1, 1 + a_n, 1 + 2 * a_n, 1 + 3 * a_n, 1 + 4 * a_n
    mm = 1 + 5 * a_n
    n_scalars = mm + len(pairs)
    t_ang = 1  # Re w, Im w, Re w², Im w² of angle a at t_ang + 4a + (0..3)
    t_pair = 1 + 4 * a_n
    t_rho = t_pair + 4 * len(pairs)
    n_t = t_rho + 1 + 2 * a_n
    rows, cols, _ = _frame_pairs(a_n, p_n)
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
    :func:`pattern_jacobian` is a per-frame combination of these (:func:`_coherent_coefficients`)."""
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
    """:func:`residual_covariance` for the parametric light pattern
    ``l = pattern_maps(pattern, modulation, ...)`` with the coherent per-angle errors of
    :func:`pattern_jacobian` (the same numbers up to float round-off; tested), computed through
    the fixed trigonometric maps of the comment above: the training objective's path.

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
    rows, cols, n_same = _frame_pairs(n_angles, n_phases)
    zero = jnp.zeros_like(modulation)
    var_phase, var_modulation, var_k = (zero if v is None else v
                                        for v in (var_phase, var_modulation, var_k))
    use_psf = var_psf is not None and not (isinstance(psf_var_weight, (int, float))
                                           and psf_var_weight == 0)
    offset = r - 1 + k // 2
    grid = (_lr_grid(hh + k + r - 2, offset, h, r, hh + r - 1),
            _lr_grid(wh + k + r - 2, offset, w, r, wh + r - 1))

    def to_lr(spec):
        return _decimated_irfft2(spec, grid, r, (h, w))

    axes = _pattern_axes(pattern, (h, w), r)
    basis = _error_basis(*axes)  # (B, A, 6, Hh, Wh)
    coherent = _coherent_coefficients(modulation, var_phase, var_modulation, var_k, n_phases)
    g = merged_psf_box_kernel(mu_p, r)

    pairs = jnp.zeros((bsz, rows.size, h, w), mu_e.dtype)
    if var_emitter is not None:
        # Σ_b c_kj,b (K_D ⊛ v_e T_b) with K_D = G² + w·B(v_p)/r² (the PSF term's B(D)/r² part).
        kernel = g**2
        if use_psf:
            kernel, box_vp = align_ranks(kernel, box_mean_full(var_psf, r))
            kernel = kernel + psf_var_weight * box_vp / (r * r)
        blurred = to_lr(_filtered(var_emitter[:, None] * _trig_basis(*axes), _per_sample(kernel),
                                  grid))  # (B, n_T, H, W)
        scalars = _trig_scalars(m_mean, modulation, var_phase, var_modulation, var_k)
        coef = jnp.einsum("bs,spt->bpt", scalars,
                          jnp.asarray(_trig_coefficients(n_angles, n_phases), mu_e.dtype))
        pairs = pairs + jnp.einsum("bpt,bthw->bphw", coef, blurred)
    if use_psf:
        # v_p ⊛ (B(μS_k) B(μS_j) + Σ_q B(A_q,k) B(A_q,j)), all from box means of μe·basis.
        box_e = box_mean_full(mu_e, r)
        box_basis = box_mean_full(mu_e[:, None, None] * basis, r)  # (B, A, 6, Hh+r-1, Wh+r-1)
        delta = 2.0 * np.pi * np.arange(n_phases) / n_phases
        c_d = jnp.asarray(np.cos(delta), mu_e.dtype).reshape(1, 1, -1, 1, 1)
        s_d = jnp.asarray(np.sin(delta), mu_e.dtype).reshape(1, 1, -1, 1, 1)
        box_s = box_e[:, None, None] + m_mean[..., None, None, None] * (
            c_d * box_basis[:, :, :1] - s_d * box_basis[:, :, 1:2])  # (B, A, P, ...)
        box_s = box_s.reshape((bsz, f) + box_s.shape[3:])
        source = _pair_products(box_s, rows, cols)
        source = jnp.concatenate([source[:, :n_same] + _coherent_pairs(box_basis, coherent),
                                  source[:, n_same:]], axis=1)
        pairs = pairs + to_lr(_filtered(source, _per_sample(psf_var_weight * var_psf), grid))
    # Coherent LP errors through the blur: Σ_q (G ⊛ A_q)_k (G ⊛ A_q)_j.
    blurred_basis = to_lr(_filtered(mu_e[:, None, None] * basis, _per_sample(g, 2), grid))
    pairs = jnp.concatenate([pairs[:, :n_same] + _coherent_pairs(blurred_basis, coherent),
                             pairs[:, n_same:]], axis=1)

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


def covariance_of_prediction(pred: dict, n_angles: int, r: int, uq) -> jnp.ndarray:
    """:func:`residual_covariance` of a :func:`simuq_core.network.forward.predict` output
    ``(B, H, W, F, F)``: its emitter, light-pattern (parametric: the coherent per-angle errors of
    ``pattern_logvar``, ordered phase, modulation, ``|k|``, through
    :func:`parametric_residual_covariance`; free: per-pixel ``lp_var``) and PSF variances, and its
    camera-noise variance ``var_obs`` (which already holds the residual-aware map) on the
    diagonal; ``uq``: the :class:`~simuq_core.config.UQParams`."""
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
