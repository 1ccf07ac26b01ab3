"""The light pattern drawn from a :class:`~simuq_core.pattern.estimate.PatternEstimate`, and its variance.

**Variance** of the parametric pattern, to first order in independent per-angle parameter errors
(phase ``v_φ``, modulation ``v_m``, isotropic wave vector ``v_k``)::

    Var l_f(x) = m²·sin²θ_f(x)·(v_φ + 4π²·|x − x_c|²·v_k) + cos²θ_f(x)·v_m,
    θ_f(x) = 2π k_a·(x − x_c) + φ_c,a + 2πp/P.

It is exact as a per-pixel marginal (what the supervised LP metrics test); the errors it describes are
smooth, i.e. correlated across pixels, which the diagonal propagation to ``Var(rec)`` ignores
(docs/design.md §5: reported, small next to the camera noise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simuq_core.pattern.estimate import PatternEstimate

__all__ = [
    "pattern_maps",
    "pattern_phase_angles",
    "pattern_variance",
]


def pattern_phase_angles(pattern: PatternEstimate, n_phases: int, shape_lr: tuple[int, int], r: int):
    """Pattern argument ``θ_f`` on the ``r``× grid ``(B, F, Hh, Wh)`` and ``|x − x_c|²``
    ``(B, 1, Hh, Wh)``."""
    h, w = shape_lr
    b, a = pattern.phase.shape
    origin = pattern.origin.reshape(b, 2)
    y = ((jnp.arange(h * r, dtype=jnp.float32) + 0.5) / r - h / 2.0).reshape(1, -1) - origin[:, :1]
    x = ((jnp.arange(w * r, dtype=jnp.float32) + 0.5) / r - w / 2.0).reshape(1, -1) - origin[:, 1:]
    ky = pattern.k[..., 0].reshape(b, a, 1, 1, 1)
    kx = pattern.k[..., 1].reshape(b, a, 1, 1, 1)
    steps = (2.0 * jnp.pi * jnp.arange(n_phases) / n_phases).reshape(1, 1, n_phases, 1, 1)
    theta = (2.0 * jnp.pi * (ky * y.reshape(b, 1, 1, -1, 1) + kx * x.reshape(b, 1, 1, 1, -1))
             + pattern.phase.reshape(b, a, 1, 1, 1) + steps)
    dist2 = y.reshape(b, 1, -1, 1) ** 2 + x.reshape(b, 1, 1, -1) ** 2
    return theta.reshape(b, a * n_phases, h * r, w * r), dist2


def _per_frame(v: jax.Array, n_phases: int) -> jax.Array:
    """``(B, A)`` per-angle values -> ``(B, A·P, 1, 1)``."""
    return jnp.repeat(v, n_phases, axis=1)[..., None, None]


def pattern_maps(pattern: PatternEstimate, modulation: jax.Array, n_phases: int,
                 shape_lr: tuple[int, int], r: int) -> jax.Array:
    """``1 + m·cos θ_f`` on the ``r``× grid: ``(B, A·P, r·H, r·W)``; ``modulation`` ``(B, A)``."""
    theta, _ = pattern_phase_angles(pattern, n_phases, shape_lr, r)
    return 1.0 + _per_frame(modulation, n_phases) * jnp.cos(theta)


def pattern_variance(pattern: PatternEstimate, modulation: jax.Array, var_phase: jax.Array,
                     var_modulation: jax.Array, var_k: jax.Array, n_phases: int,
                     shape_lr: tuple[int, int], r: int) -> jax.Array:
    """First-order variance of :func:`pattern_maps` (module docstring); variances ``(B, A)``."""
    theta, dist2 = pattern_phase_angles(pattern, n_phases, shape_lr, r)
    m = _per_frame(modulation, n_phases)
    v_phase = _per_frame(var_phase, n_phases) + 4.0 * jnp.pi**2 * _per_frame(var_k, n_phases) * dist2
    return (m * jnp.sin(theta)) ** 2 * v_phase + jnp.cos(theta) ** 2 * _per_frame(var_modulation,
                                                                                 n_phases)
