"""Aleatoric variance propagation through the SIM forward model (docs/design.md §1, §4, §5).

The network predicts, for the components chosen by ``uq.targets``, a per-pixel (per-tap for the
PSF) variance next to each mean. This module carries those variances through
``rec_k = block_mean_r(conv_same(e · l_k, p)) [+ bg]`` (:func:`simuq_core.optics.imaging.forward_model`)
to ``Var(rec)`` and adds the observation noise (the camera's Poisson-Gaussian model) and the floor.
Raw log-variances are bounded in :mod:`simuq_core.uncertainty.logvar_bounds`; the Monte-Carlo
reference these rules are checked against is :mod:`simuq_core.uncertainty.monte_carlo`.

Shapes (``r`` = HR pixels per LR pixel, ``Hh = r·H``):

- emitter mean / variance ``(B, Hh, Wh)``;
- light pattern mean / variance ``(B, F, Hh, Wh)``;
- PSF mean / variance ``(B, K, K)`` (one kernel per sample) or ``(K, K)`` (shared), ``K`` odd;
- rec and every propagated variance ``(B, F, H, W)``; ``deconv = S = e · l`` ``(B, F, Hh, Wh)``.

Model assumptions: emitter pixels, light-pattern pixels and PSF taps are mutually independent
(of any distribution: only first and second moments enter, and the rules below are exact); the
PSF is *one* random kernel shared by every pixel and frame of a sample, so its errors are coherent
across pixels. Correlated latent errors (smooth CNN errors) break every
diagonal model, this one included (docs/design.md §5): it is validated against Monte Carlo for the model
it states, not for the network's real error structure.

Every convolution goes through :func:`simuq_core.optics.imaging.fft_convolve` (directly or via
``merged_psf_box_kernel`` / ``pooled_full_convolve``) so that the mean path and the variance path
use the same orientation by construction.

Typical use inside a jitted training step (``r`` and every option must be static Python values)::

    var = propagate_rec_variance(
        emitter, lp, psf, r,
        **target_variances(uq.targets, emitter=var_e, light_pattern=var_l, psf=var_p),
        obs_noise_params=noise_params,
        **propagation_options(uq),
    )
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simuq_core.optics.imaging import (
    block_mean,
    box_mean_full,
    fft_convolve,
    fft_convolve_sum,
    forward_model,
    merged_psf_box_kernel,
    pooled_full_convolve,
)

__all__ = [
    "ObsNoiseParams",
    "RecVariance",
    "init_obs_noise_params",
    "local_residual_energy",
    "obs_noise_coefficients",
    "observation_variance",
    "pooled_latent_variance",
    "product_variance",
    "propagate_rec_variance",
    "propagation_options",
    "psf_uncertainty_variance",
    "target_variances",
]

POOL_VAR_MODES = ("exact", "independent")
OBS_NOISE_MODES = ("none", "poisson_gaussian", "poisson_gaussian_map")


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _per_frame(kernel: jnp.ndarray) -> jnp.ndarray:
    """``(B, K, K) -> (B, 1, K, K)``: a per-sample kernel broadcasts over frames; ``(K, K)`` as is.

    (``fft_convolve`` aligns ranks by *prepending* axes, which would pair ``B`` with ``F``.)
    """
    return kernel[:, None] if kernel.ndim == 3 else kernel


def _box_mean_full(x: jnp.ndarray, r: int) -> jnp.ndarray:
    """``B(x) = conv_full(x, ones(r, r)) / r²``: ``(..., Hh, Wh) -> (..., Hh+r-1, Wh+r-1)``."""
    return box_mean_full(x, r)


def _exact_latent_variance(
    mean_deconv: jnp.ndarray,
    var_deconv: jnp.ndarray | None,
    psf: jnp.ndarray,
    var_psf: jnp.ndarray | None,
    r: int,
    psf_var_weight: float | jnp.ndarray,
) -> jnp.ndarray:
    """:func:`pooled_latent_variance` + ``psf_var_weight`` · :func:`psf_uncertainty_variance`
    (``pool_var="exact"``) in one pass: the same maps, computed with fewer FFTs.

    Both PSF terms are linear in ``Var p``, so they merge into one convolution,
    ``conv_full(B(μS)² + B(Var S)/r², Var p)``; that map and ``conv_full(Var S, G²)`` have the same
    full size ``Hh + K + r − 2`` and are sampled at the same LR offsets, so their spectra are
    summed before a single inverse FFT (:func:`simuq_core.optics.imaging.fft_convolve_sum`).
    """
    k = psf.shape[-1]
    h, w = mean_deconv.shape[-2] // r, mean_deconv.shape[-1] // r
    pairs = []
    if var_deconv is not None:
        g = merged_psf_box_kernel(psf, r)
        pairs.append((var_deconv, _per_frame(g**2)))
    if var_psf is not None:
        source = _box_mean_full(mean_deconv, r) ** 2
        if var_deconv is not None:
            source = source + _box_mean_full(var_deconv, r) / (r * r)
        pairs.append((source, _per_frame(psf_var_weight * var_psf)))
    if not pairs:
        return jnp.zeros(mean_deconv.shape[:-2] + (h, w), mean_deconv.dtype)
    return _sample_lr(fft_convolve_sum(pairs), r, k, h, w)


def _sample_lr(full: jnp.ndarray, r: int, psf_size: int, h: int, w: int) -> jnp.ndarray:
    """Pixels ``r·i + r − 1 + K//2`` of a ``conv_full(B(·), ·)`` map: the LR grid of the mean path.

    With the physics conventions ``rec[i] = conv_full(B(S), p)[r·i + r − 1 + K//2]`` (per axis), the
    same offset :func:`simuq_core.optics.imaging.pooled_full_convolve` uses.
    """
    off = r - 1 + psf_size // 2
    return full[..., off : off + r * h : r, off : off + r * w : r]


def _is_static_zero(x: Any) -> bool:
    return isinstance(x, (int, float)) and x == 0


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Propagation rules
# ----------------------------------------------------------------------------------------------


def product_variance(
    mean_emitter: jnp.ndarray,
    mean_light_pattern: jnp.ndarray,
    var_emitter: jnp.ndarray | None = None,
    var_light_pattern: jnp.ndarray | None = None,
) -> jnp.ndarray | None:
    """Variance of the deconvolved image ``S_k = e · l_k`` (docs/design.md §5, product rule).

    ``Var(S) = μe²·Var(l) + μl²·Var(e) + Var(e)·Var(l)``, exact for independent ``e`` and ``l``.
    A component that is not a UQ target passes ``None`` (zero variance, no contribution).

    mean_emitter, var_emitter : ``(B, Hh, Wh)``; mean_light_pattern, var_light_pattern :
    ``(B, F, Hh, Wh)``. Returns ``(B, F, Hh, Wh)``, or ``None`` when both variances are ``None``.
    """
    mu_e = mean_emitter[:, None]
    if var_emitter is None and var_light_pattern is None:
        return None
    if var_light_pattern is None:
        return mean_light_pattern**2 * var_emitter[:, None]
    if var_emitter is None:
        return mu_e**2 * var_light_pattern
    var_e = var_emitter[:, None]
    return mu_e**2 * var_light_pattern + mean_light_pattern**2 * var_e + var_e * var_light_pattern


def pooled_latent_variance(
    var_deconv: jnp.ndarray, psf: jnp.ndarray, r: int, pool_var: str = "exact"
) -> jnp.ndarray:
    """Variance of ``block_mean_r(conv_same(S, p))`` for independent ``S`` pixels, fixed ``p``.

    ``pool_var="exact"`` (docs/design.md §4.2): with ``G = merged_psf_box_kernel(p, r)``
    ``= conv_full(p, ones(r, r)) / r²``, ``rec = conv_full(S, G)`` sampled every ``r`` pixels from
    offset ``r − 1 + K//2``, hence ``Var(rec) = pooled_full_convolve(Var S, G², r, K)`` exactly.

    ``pool_var="independent"`` (the original, biased-low ablation): treats blurred HR pixels as
    independent, ``block_mean(conv_same(Var S, p²), r) / r²``.

    var_deconv : ``(B, F, Hh, Wh)``; psf : ``(B, K, K)`` or ``(K, K)``. Returns ``(B, F, H, W)``.
    """
    _check_choice("pool_var", pool_var, POOL_VAR_MODES)
    if pool_var == "independent":
        return block_mean(fft_convolve(var_deconv, _per_frame(psf**2), "same"), r) / (r * r)
    g = merged_psf_box_kernel(psf, r)
    return pooled_full_convolve(var_deconv, _per_frame(g**2), r, psf.shape[-1])


def psf_uncertainty_variance(
    mean_deconv: jnp.ndarray,
    var_deconv: jnp.ndarray | None,
    var_psf: jnp.ndarray,
    r: int,
    pool_var: str = "exact",
) -> jnp.ndarray:
    """Extra ``Var(rec)`` from a random PSF shared by all pixels (docs/design.md §4.3).

    With ``B(x) = conv_full(x, ones(r, r)) / r²`` the pooled forward model is
    ``rec[i] = conv_full(B(S), p)[r·i + r − 1 + K//2]``; for independent PSF taps (shared by every
    pixel) independent of ``S``, the terms beyond the fixed-PSF rule are exactly

        ``conv_full(B(μS)², Var p) + conv_full(B(Var S) / r², Var p)``

    sampled on that LR grid (``Var B(S) = B(Var S) / r²`` for independent ``S``). The second term is
    linear in ``Var S`` and is evaluated as ``pooled_full_convolve(Var S,
    merged_psf_box_kernel(Var p, r) / r², r, K)`` (the same kernel algebra as the mean path).

    ``pool_var="independent"`` gives the original per-pixel rule instead (taps treated as
    independent per output pixel, pooling divides by ``r²``):
    ``block_mean(conv_same(μS² + Var S, Var p), r) / r²``. Both agree at ``r = 1``.

    mean_deconv : ``(B, F, Hh, Wh)``; var_deconv : same or ``None`` (zero); var_psf : ``(B, K, K)``
    or ``(K, K)``. Returns ``(B, F, H, W)`` (not yet multiplied by ``psf_var_weight``).
    """
    _check_choice("pool_var", pool_var, POOL_VAR_MODES)
    k = var_psf.shape[-1]
    vp = _per_frame(var_psf)
    if pool_var == "independent":
        second = mean_deconv**2 if var_deconv is None else mean_deconv**2 + var_deconv
        return block_mean(fft_convolve(second, vp, "same"), r) / (r * r)
    h, w = mean_deconv.shape[-2] // r, mean_deconv.shape[-1] // r
    coherent = _sample_lr(fft_convolve(_box_mean_full(mean_deconv, r) ** 2, vp, "full"), r, k, h, w)
    if var_deconv is None:
        return coherent
    vp_box = _per_frame(merged_psf_box_kernel(var_psf, r)) / (r * r)
    return coherent + pooled_full_convolve(var_deconv, vp_box, r, k)


class ObsNoiseParams(NamedTuple):
    """Learned Poisson–Gaussian noise coefficients, unconstrained (``a = softplus(a_raw)``).

    a_raw, b_raw : scalars (or arrays broadcastable against ``(B, F, H, W)`` with equal rank).
    """

    a_raw: jnp.ndarray
    b_raw: jnp.ndarray


def _softplus_inverse(y: float) -> float:
    """``x`` with ``softplus(x) = y`` for ``y > 0`` (float64, stable for small and large ``y``)."""
    if y <= 0:
        raise ValueError(f"softplus is strictly positive; cannot invert {y}")
    return float(y + np.log(-np.expm1(-y)))


def init_obs_noise_params(a: float = 1e-3, b: float = 1e-4, dtype=jnp.float32) -> ObsNoiseParams:
    """Unconstrained parameters whose softplus is exactly the target ``a`` (gain) and ``b``."""
    return ObsNoiseParams(
        a_raw=jnp.asarray(_softplus_inverse(a), dtype=dtype),
        b_raw=jnp.asarray(_softplus_inverse(b), dtype=dtype),
    )


def obs_noise_coefficients(params: ObsNoiseParams) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(a, b) = (softplus(a_raw), softplus(b_raw))``, both ``> 0``."""
    return jax.nn.softplus(params.a_raw), jax.nn.softplus(params.b_raw)


def local_residual_energy(x: jnp.ndarray, rec: jnp.ndarray, window: int) -> jnp.ndarray:
    """Leave-one-out local mean of the squared residual: ``(B, 1, H, W)``.

    ``L(i) = mean over frames and over the ``window × window`` neighbours j ≠ i of (x − rec)²(j)``
    (image borders: the neighbours that exist). For independent pixel noise with a smoothly
    varying level, ``L(i)`` estimates pixel ``i``'s residual variance without using pixel ``i``,
    so feeding it to a variance head is not circular. No gradient flows through it.
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 3, got {window}")
    r2 = jax.lax.stop_gradient(((x - rec) ** 2).mean(axis=1, keepdims=True))
    dims, strides = (1, 1, window, window), (1, 1, 1, 1)
    summed = jax.lax.reduce_window(r2, 0.0, jax.lax.add, dims, strides, "SAME")
    # How many neighbours exist at each pixel, from the static shape (NumPy at trace time: a
    # reduce_window over a constant of ones is folded by XLA, which takes seconds at large tiles).
    h, w = r2.shape[-2:]
    half = window // 2
    ny = np.minimum(np.arange(h) + half, h - 1) - np.maximum(np.arange(h) - half, 0) + 1
    nx = np.minimum(np.arange(w) + half, w - 1) - np.maximum(np.arange(w) - half, 0) + 1
    count = jnp.asarray((ny[:, None] * nx[None, :]).astype(np.float32))
    return (summed - r2) / (count[None, None] - 1.0)


def observation_variance(
    rec: jnp.ndarray,
    obs_noise: str = "none",
    params: ObsNoiseParams | None = None,
    var_map: jnp.ndarray | None = None,
) -> jnp.ndarray | None:
    """Camera noise variance on the LR grid (docs/design.md §4.4).

    - ``"none"``: ``None`` (no term);
    - ``"poisson_gaussian"``: ``a·max(rec, 0) + b`` with ``a, b = softplus(raw)`` (shot noise
      proportional to the signal, read noise constant);
    - ``"poisson_gaussian_map"``: ``a·max(rec, 0) + b + var_map`` with ``var_map ≥ 0`` a per-pixel
      head (spatially varying extra noise, e.g. ``variance_from_logvar`` of a head output).

    rec : ``(B, F, H, W)``; var_map : ``(B, F, H, W)`` or ``(B, 1, H, W)`` (shared by the frames).
    Returns ``(B, F, H, W)`` or ``None``.
    """
    _check_choice("obs_noise", obs_noise, OBS_NOISE_MODES)
    if obs_noise == "none":
        return None
    if params is None:
        raise ValueError(f"obs_noise={obs_noise!r} needs obs_noise_params")
    a, b = obs_noise_coefficients(params)
    var = a * jnp.maximum(rec, 0.0) + b
    if obs_noise == "poisson_gaussian_map":
        if var_map is None:
            raise ValueError("obs_noise='poisson_gaussian_map' needs obs_var_map")
        var = var + var_map
    return var


class RecVariance(NamedTuple):
    """Output of :func:`propagate_rec_variance`; every LR map is ``(B, F, H, W)``.

    rec : mean reconstruction (the forward model of the means).
    var_rec : total ``var_latent + var_obs + var_floor``.
    var_latent : from emitter, light pattern and PSF variances (PSF terms weighted).
    var_obs : observation-noise variance (zeros when ``obs_noise="none"``).
    var_deconv : ``Var(S)`` of ``S = e · l`` on the HR grid, ``(B, F, Hh, Wh)`` (zeros if no
        emitter/lp target).
    """

    rec: jnp.ndarray
    var_rec: jnp.ndarray
    var_latent: jnp.ndarray
    var_obs: jnp.ndarray
    var_deconv: jnp.ndarray


def propagate_rec_variance(
    emitter: jnp.ndarray,
    light_pattern: jnp.ndarray,
    psf: jnp.ndarray,
    r: int,
    *,
    var_emitter: jnp.ndarray | None = None,
    var_light_pattern: jnp.ndarray | None = None,
    var_psf: jnp.ndarray | None = None,
    psf_var_weight: float | jnp.ndarray = 1.0,
    pool_var: str = "exact",
    obs_noise: str = "none",
    obs_noise_params: ObsNoiseParams | None = None,
    obs_var_map: jnp.ndarray | None = None,
    var_floor: float = 0.0,
    background: jnp.ndarray | None = None,
    detach_mean_in_var: bool = False,
) -> RecVariance:
    """Mean and variance of the SIM reconstruction (docs/design.md §1, §4.2–§4.4, §5).

    ``Var(rec) = V_S + w·V_p + V_obs + floor`` with

    - ``V_S``: :func:`pooled_latent_variance` of ``Var S`` (:func:`product_variance`) through the
      mean PSF and the ``r × r`` pooling (``pool_var`` exact or independent);
    - ``V_p``: :func:`psf_uncertainty_variance`, ``w = psf_var_weight`` (0 or ``var_psf=None``
      disables it);
    - ``V_obs``: :func:`observation_variance` evaluated at the mean ``rec`` (background included),
      plus the per-pixel ``obs_var_map`` for ``obs_noise="poisson_gaussian_map"``;
    - ``floor = var_floor``.

    Options mirror :class:`simuq_core.config.UQParams` (see :func:`propagation_options`); a
    component that is not a UQ target passes ``None`` for its variance (see
    :func:`target_variances`). ``detach_mean_in_var=True`` stops the gradient of the *means*
    (emitter, light pattern, PSF, rec) wherever they enter a variance formula, so the mean
    parameters are trained only through ``rec``; the variances still get full gradients.

    Parameters
    ----------
    emitter : ``(B, Hh, Wh)``; light_pattern : ``(B, F, Hh, Wh)``;
    psf : ``(B, K, K)`` or ``(K, K)``.
    r : pooling factor (static). var_* : the matching variances or ``None``.
    obs_noise_params : :class:`ObsNoiseParams` (needed unless ``obs_noise="none"``).
    obs_var_map : ``(B, F, H, W)`` or ``(B, 1, H, W)``, ``≥ 0`` (``"poisson_gaussian_map"`` only).
    background : optional ``(B, H, W)`` or ``(B, F, H, W)`` (deterministic).

    Returns
    -------
    :class:`RecVariance` (``var_latent`` clipped at 0 against FFT round-off).
    """
    _check_choice("pool_var", pool_var, POOL_VAR_MODES)
    _check_choice("obs_noise", obs_noise, OBS_NOISE_MODES)
    rec = forward_model(emitter, light_pattern, psf, r, background)

    sg = jax.lax.stop_gradient if detach_mean_in_var else (lambda x: x)
    mu_e, mu_l, mu_p, mu_rec = sg(emitter), sg(light_pattern), sg(psf), sg(rec)
    mean_deconv = mu_e[:, None] * mu_l

    var_deconv = product_variance(mu_e, mu_l, var_emitter, var_light_pattern)
    use_psf = var_psf is not None and not _is_static_zero(psf_var_weight)
    if pool_var == "exact":
        var_latent = _exact_latent_variance(mean_deconv, var_deconv, mu_p,
                                            var_psf if use_psf else None, r, psf_var_weight)
    else:
        var_latent = jnp.zeros_like(rec)
        if var_deconv is not None:
            var_latent = var_latent + pooled_latent_variance(var_deconv, mu_p, r, pool_var)
        if use_psf:
            v_p = psf_uncertainty_variance(mean_deconv, var_deconv, var_psf, r, pool_var)
            var_latent = var_latent + psf_var_weight * v_p
    var_latent = jnp.maximum(var_latent, 0.0)

    var_obs = observation_variance(mu_rec, obs_noise, obs_noise_params, obs_var_map)
    var_obs = jnp.zeros_like(rec) if var_obs is None else var_obs
    var_rec = var_latent + var_obs + var_floor
    if var_deconv is None:
        var_deconv = jnp.zeros_like(mean_deconv)
    return RecVariance(rec, var_rec, var_latent, var_obs, var_deconv)


def propagation_options(uq: Any) -> dict[str, Any]:
    """Keyword options of :func:`propagate_rec_variance` from a ``UQParams``-like object.

    Reads the attributes ``psf_var_weight``, ``pool_var``, ``obs_noise``, ``var_floor`` and
    ``detach_mean_in_var``. ``targets`` is applied with :func:`target_variances`; the log-variance
    options with :func:`~simuq_core.uncertainty.logvar_bounds.variance_from_logvar` /
    :func:`~simuq_core.uncertainty.logvar_bounds.logvar_bias_init`; the loss options in
    :mod:`simuq_core.training.losses`.
    """
    return {
        "psf_var_weight": float(uq.psf_var_weight),
        "pool_var": str(uq.pool_var),
        "obs_noise": str(uq.obs_noise),
        "var_floor": float(uq.var_floor),
        "detach_mean_in_var": bool(uq.detach_mean_in_var),
    }


def target_variances(
    targets: Iterable[str],
    *,
    emitter: jnp.ndarray | None = None,
    light_pattern: jnp.ndarray | None = None,
    psf: jnp.ndarray | None = None,
) -> dict[str, jnp.ndarray | None]:
    """``var_emitter`` / ``var_light_pattern`` / ``var_psf`` keywords, ``None`` for non-targets.

    targets : subset of ``{"emitter", "lp", "psf"}`` (``UQParams.targets``).
    """
    targets = set(targets)
    unknown = targets - {"emitter", "lp", "psf"}
    if unknown:
        raise ValueError(f"unknown UQ targets {sorted(unknown)}")
    return {
        "var_emitter": emitter if "emitter" in targets else None,
        "var_light_pattern": light_pattern if "lp" in targets else None,
        "var_psf": psf if "psf" in targets else None,
    }
