"""A jittable generalised Wiener SIM image, computed inside the network as one of its inputs.

:mod:`simuq_core.baselines.wiener` is the classical *baseline* (NumPy, float64, exact noise
variance, border handling). This is its lean JAX sibling for the *network*: the same filter, from
the same pattern estimate the network already receives (:class:`~simuq_core.pattern.estimate.PatternEstimate`,
with its reference point, so tiles of one image agree), batched and differentiable, so that the
network starts from what classical SIM recovers beyond the widefield cut-off instead of having to
learn band separation and shifting from scratch. Per angle ``a`` with ``P`` equal phase steps::

    c₀ = mean_p D_p = h⊛s,        c₊ = mean_p D_p·e^{−2πip/P} = (m/2)·h⊛(s·e^{iθ_a}),
    B₀(f) = FT[↑c₀],  B±(f) = FT[e^{∓iθ_a}·↑c±] = (m/2)·H(f ± k_a)·S(f),
    Ŝ(f) = A(f)·Σ_{a,b} a_b·H_b(f)·B_ab(f) / (Σ_{a,b} a_b²·H_b(f)² + w²),

``↑`` the Fourier interpolation onto the ``r``× grid (zero-padded spectrum, shifted so LR pixel
centres land where the ``r``× grid has them), ``a₀ = 1``, ``a± = m/2``, ``H`` the camera OTF (Airy
× pixel sinc, :func:`simuq_core.pattern.estimate._lr_otf`) and ``A`` a cos-bell over the extended support
``2NA/λ + |k|``. Frequencies are in cycles per camera pixel. Unlike the baseline, the bands are
shifted in real space before filtering (on a finite grid the shift wraps a little at the edges;
the network sees the same artefact in training and at tiles, so it is learned, not propagated).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simuq_core.pattern.estimate import PatternEstimate, _lr_otf
from simuq_core.pattern.maps import pattern_phase_angles

__all__ = ["fourier_upsample", "wiener_sim_jax"]


def fourier_upsample(x: jax.Array, r: int) -> jax.Array:
    """Band-limited interpolation of ``(..., H, W)`` (real or complex) onto the ``r``× grid whose
    pixel ``j`` has centre ``(j + 0.5)/r`` in LR pixels: ``(..., rH, rW)`` complex."""
    h, w = x.shape[-2:]
    spec = jnp.fft.fft2(x)
    # LR sample i sits at i + 0.5, HR sample j at (j + 0.5)/r: the HR grid starts δ = (1 − r)/(2r)
    # LR pixels before the LR one, a phase ramp e^{2πi f δ} on the zero-padded spectrum.
    delta = (1.0 - r) / (2.0 * r)
    fy, fx = jnp.fft.fftfreq(h), jnp.fft.fftfreq(w)
    ramp = jnp.exp(2j * jnp.pi * delta * (fy[:, None] + fx[None, :]))
    spec = spec * ramp.reshape((1,) * (x.ndim - 2) + (h, w))
    iy = jnp.where(fy >= 0, jnp.arange(h), jnp.arange(h) + (r - 1) * h)
    ix = jnp.where(fx >= 0, jnp.arange(w), jnp.arange(w) + (r - 1) * w)
    padded = jnp.zeros((*x.shape[:-2], r * h, r * w), spec.dtype)
    padded = padded.at[..., iy[:, None], ix[None, :]].set(spec)
    return jnp.fft.ifft2(padded) * (r * r)


def wiener_sim_jax(x: jax.Array, pattern: PatternEstimate, modulation: jax.Array | float,
                   otf_cutoff: float, r: int, wiener_w: float = 0.05,
                   apodization_cutoff: float = 1.0) -> jax.Array:
    """Generalised Wiener SIM of frames ``(B, F, H, W)`` (angle-major, equal phase steps) on the
    ``r``× grid: ``(B, rH, rW)`` float32 (module docstring). ``modulation``: ``(B, A)`` or a scalar;
    ``otf_cutoff``: ``2NA/λ`` in cycles per camera pixel."""
    b, f, h, w = x.shape
    a = pattern.phase.shape[-1]
    p = f // a
    d = x.reshape(b, a, p, h, w)
    steps = jnp.exp(-2j * jnp.pi * jnp.arange(p) / p).reshape(1, 1, p, 1, 1)
    c0 = fourier_upsample(d.mean(axis=2), r)  # (B, A, rH, rW)
    cp = fourier_upsample((d * steps).mean(axis=2), r)
    theta, _ = pattern_phase_angles(pattern, p, (h, w), r)
    theta = theta[:, ::p]  # phase 0 of each angle: θ_a(x) on the r× grid, (B, A, rH, rW)
    shifted = jnp.stack([c0, cp * jnp.exp(-1j * theta), jnp.conj(cp) * jnp.exp(1j * theta)], 2)
    bands = jnp.fft.fft2(shifted)  # (B, A, 3, rH, rW): B₀, B₊, B₋
    fy = (jnp.fft.fftfreq(r * h) * r).reshape(1, 1, 1, r * h, 1)
    fx = (jnp.fft.fftfreq(r * w) * r).reshape(1, 1, 1, 1, r * w)
    order = jnp.asarray([0.0, 1.0, -1.0]).reshape(1, 1, 3, 1, 1)
    ky = pattern.k[..., 0].reshape(b, a, 1, 1, 1)
    kx = pattern.k[..., 1].reshape(b, a, 1, 1, 1)
    otf = _lr_otf(fy + order * ky, fx + order * kx, otf_cutoff)  # H_b(f) = H(f ± k)
    m = jnp.broadcast_to(jnp.asarray(modulation, jnp.float32), (b, a)).reshape(b, a, 1, 1, 1)
    weight = jnp.where(order == 0, 1.0, m / 2.0)
    num = (weight * otf * bands).sum(axis=(1, 2))
    den = ((weight * otf) ** 2).sum(axis=(1, 2)) + wiener_w**2
    kmax = jnp.sqrt(ky**2 + kx**2).max(axis=1).reshape(b, 1, 1)
    rho = jnp.sqrt(fy[0, 0] ** 2 + fx[0, 0] ** 2) / (apodization_cutoff * (otf_cutoff + kmax))
    apod = jnp.where(rho < 1.0, jnp.cos(0.5 * jnp.pi * jnp.minimum(rho, 1.0)), 0.0)
    return jnp.real(jnp.fft.ifft2(apod * num / den)).astype(jnp.float32)
