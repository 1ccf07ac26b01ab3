"""Monte-Carlo reference for the variance propagation of
:func:`simuq_core.uncertainty.propagation.propagate_rec_variance`.

:func:`mc_propagate_rec_variance` samples the latent components from the model the analytic rules
state (independent pixels and taps, one PSF draw shared by a whole sample), runs the mean forward
model on every draw and returns the empirical moments of ``rec``: the check of the exact rules in
the tests and the baseline of ``benchmarks/bench_propagation.py``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from simuq_core.optics.imaging import forward_model

__all__ = ["MonteCarloVariance", "mc_propagate_rec_variance"]


class MonteCarloVariance(NamedTuple):
    """Empirical moments of ``rec`` over latent draws, ``(B, F, H, W)`` each."""

    rec: jnp.ndarray
    var_rec: jnp.ndarray


def _default_chunk(n_samples: int, cap: int = 256) -> int:
    return max(d for d in range(1, min(n_samples, cap) + 1) if n_samples % d == 0)


@functools.partial(jax.jit, static_argnames=("r", "n_samples", "chunk_size"))
def _mc_moments(key, emitter, light_pattern, psf, var_emitter, var_light_pattern, var_psf,
                background, *, r, n_samples, chunk_size):
    def draw(k):
        k_e, k_l, k_p = jax.random.split(k, 3)
        e, lp, p = emitter, light_pattern, psf
        if var_emitter is not None:
            e = e + jnp.sqrt(var_emitter) * jax.random.normal(k_e, e.shape, e.dtype)
        if var_light_pattern is not None:
            lp = lp + jnp.sqrt(var_light_pattern) * jax.random.normal(k_l, lp.shape, lp.dtype)
        if var_psf is not None:  # one kernel draw per sample, shared by all its pixels and frames
            p = p + jnp.sqrt(var_psf) * jax.random.normal(k_p, p.shape, p.dtype)
        return forward_model(e, lp, p, r, background)

    n_chunks = n_samples // chunk_size
    keys = jax.random.split(key, n_samples)
    keys = keys.reshape((n_chunks, chunk_size) + keys.shape[1:])

    def step(carry, chunk_keys):
        # Chan et al. pairwise update: stable mean / M2 accumulation in float32.
        n_a, mean_a, m2_a = carry
        recs = jax.vmap(draw)(chunk_keys)
        mean_b = recs.mean(axis=0, keepdims=True)
        m2_b = ((recs - mean_b) ** 2).sum(axis=0)
        mean_b = mean_b[0]
        n = n_a + chunk_size
        delta = mean_b - mean_a
        mean = mean_a + delta * (chunk_size / n)
        m2 = m2_a + m2_b + delta**2 * (n_a * chunk_size / n)
        return (n, mean, m2), None

    shape = jax.eval_shape(draw, keys[0, 0])
    zeros = jnp.zeros(shape.shape, shape.dtype)
    (_, mean, m2), _ = jax.lax.scan(step, (jnp.zeros((), shape.dtype), zeros, zeros), keys)
    return mean, m2 / (n_samples - 1)


def mc_propagate_rec_variance(
    key: jax.Array,
    emitter: jnp.ndarray,
    light_pattern: jnp.ndarray,
    psf: jnp.ndarray,
    r: int,
    *,
    var_emitter: jnp.ndarray | None = None,
    var_light_pattern: jnp.ndarray | None = None,
    var_psf: jnp.ndarray | None = None,
    n_samples: int = 1024,
    chunk_size: int | None = None,
    background: jnp.ndarray | None = None,
) -> MonteCarloVariance:
    """Monte-Carlo reference for the latent part of
    :func:`~simuq_core.uncertainty.propagation.propagate_rec_variance`.

    Draws ``e ~ N(μe, Var e)`` and ``l ~ N(μl, Var l)`` independently per pixel and
    ``p ~ N(μp, Var p)`` independently per tap but *once per draw* (shared by every pixel and frame
    of a sample, as in the model), runs :func:`simuq_core.optics.imaging.forward_model` and returns the
    empirical mean and unbiased variance (``/(N − 1)``; relative standard error
    ``≈ sqrt(2/(N − 1))`` for near-Gaussian ``rec``). Observation noise is not sampled (it is
    additive and independent, so its variance simply adds).

    Draws are vectorised ``chunk_size`` at a time (``vmap``) inside a ``lax.scan``; ``chunk_size``
    must divide ``n_samples`` (default: its largest divisor ≤ 256). Shapes as in
    :func:`~simuq_core.uncertainty.propagation.propagate_rec_variance`; returns ``(B, F, H, W)`` maps.
    """
    if n_samples < 2:
        raise ValueError(f"need n_samples >= 2, got {n_samples}")
    chunk_size = _default_chunk(n_samples) if chunk_size is None else chunk_size
    if n_samples % chunk_size:
        raise ValueError(f"chunk_size {chunk_size} must divide n_samples {n_samples}")
    mean, var = _mc_moments(
        key, emitter, light_pattern, psf, var_emitter, var_light_pattern, var_psf, background,
        r=r, n_samples=n_samples, chunk_size=chunk_size,
    )
    return MonteCarloVariance(mean, var)
