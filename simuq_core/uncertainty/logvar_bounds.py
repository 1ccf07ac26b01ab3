"""Bounded log-variances: how a variance head's raw output becomes a variance in ``[e^lo, e^hi]``
(docs/design.md §2, §4.5).

:func:`bound_logvar` bounds a raw log-variance (``"hard"``: a clip; ``"soft"``: a smooth,
strictly increasing map with algebraic tails, so the gradient never vanishes),
:func:`variance_from_logvar` exponentiates it, and :func:`logvar_bias_init` gives the head bias
whose *bounded* value is the wanted initial log-variance.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

__all__ = [
    "LOGVAR_BOUND_MODES",
    "bound_logvar",
    "logvar_bias_init",
    "variance_from_logvar",
]

LOGVAR_BOUND_MODES = ("hard", "soft")


def _check_mode(mode: str) -> None:
    if mode not in LOGVAR_BOUND_MODES:
        raise ValueError(f"logvar bound mode must be one of {LOGVAR_BOUND_MODES}, got {mode!r}")


def _soft_tail(u: jnp.ndarray, softness: float) -> jnp.ndarray:
    """``φ(u) = (u + sqrt(u² + 4s²)) / 2`` for ``u ≤ 0``, in the cancellation-free form
    ``2s² / (sqrt(u² + 4s²) − u)`` (``φ(0) = s``, ``φ(u) ≈ s²/|u|`` for ``u → −∞``).

    Arguments are clipped at 0 so the unselected branches of :func:`bound_logvar` stay finite.
    """
    u = jnp.where(u > 0.0, 0.0, u)  # not jnp.minimum: its gradient is halved at the tie u = 0
    c = softness * softness
    return 2.0 * c / (jnp.sqrt(u * u + 4.0 * c) - u)


def _soft_tail_gap(a: jnp.ndarray, gap: float, softness: float) -> jnp.ndarray:
    """``φ(a) − φ(a − gap)`` for ``a ≤ 0``, ``gap > 0``, without subtracting two small numbers.

    With ``q(u) = sqrt(u² + 4c) − u`` and ``b = a − gap``:
    ``φ(a) − φ(b) = 2c·gap·(1 − (a + b)/(sqrt(a² + 4c) + sqrt(b² + 4c))) / (q(a)·q(b))``.
    """
    a = jnp.where(a > 0.0, 0.0, a)
    b = a - gap
    c = softness * softness
    ra, rb = jnp.sqrt(a * a + 4.0 * c), jnp.sqrt(b * b + 4.0 * c)
    return 2.0 * c * gap * (1.0 - (a + b) / (ra + rb)) / ((ra - a) * (rb - b))


def bound_logvar(
    x: jnp.ndarray, lo: float, hi: float, mode: str = "soft", softness: float = 0.5
) -> jnp.ndarray:
    """Bound a raw log-variance to ``[lo, hi]`` (docs/design.md §2, §4.5).

    ``"hard"``: ``clip(x, lo, hi)`` (the original; zero gradient outside the bounds).

    ``"soft"``: ``y = lo + φ(x − lo) − φ(x − hi)`` with the smooth ReLU
    ``φ(u) = (u + sqrt(u² + 4s²)) / 2`` (``s = softness``). Then ``lo < y < hi`` strictly,
    ``dy/dx = φ'(x − lo) − φ'(x − hi) > 0`` everywhere (algebraic tails ``≈ s²(hi − lo)/|x|³``
    far out, so the gradient does not underflow in float32 the way exponential/sigmoid tails do;
    the *value* may round onto a bound in float32 for ``|x| ≳ 10³``), and ``y ≈ x`` in
    the middle: ``|y − x| ≲ s²/d`` at distance ``d`` from the nearer bound. Evaluated piecewise in
    three algebraically equal forms so no branch suffers cancellation.

    Heads: initialise the bias to :func:`logvar_bias_init` so the *bounded* value starts at
    ``logvar_init``.
    """
    _check_mode(mode)
    if not lo < hi:
        raise ValueError(f"need lo < hi, got lo={lo}, hi={hi}")
    if mode == "hard":
        return jnp.clip(x, lo, hi)
    if softness <= 0:
        raise ValueError(f"softness must be > 0, got {softness}")
    s = softness
    lower = lo + _soft_tail_gap(x - lo, hi - lo, s)  # φ(x − lo) − φ(x − hi)
    middle = x + _soft_tail(lo - x, s) - _soft_tail(x - hi, s)
    upper = hi - _soft_tail_gap(hi - x, hi - lo, s)  # φ(lo − x) − φ(hi − x) = −gap term
    return jnp.where(x < lo, lower, jnp.where(x > hi, upper, middle))


def variance_from_logvar(
    raw_logvar: jnp.ndarray, lo: float, hi: float, mode: str = "soft", softness: float = 0.5
) -> jnp.ndarray:
    """``exp(bound_logvar(raw_logvar, lo, hi, mode))``, any shape."""
    return jnp.exp(bound_logvar(raw_logvar, lo, hi, mode, softness))


def _soft_bound_np(x: float, lo: float, hi: float, s: float) -> float:
    def phi(u: float) -> float:
        return 0.5 * (u + math.sqrt(u * u + 4 * s * s))

    return lo + phi(x - lo) - phi(x - hi)


def logvar_bias_init(
    logvar_init: float, lo: float, hi: float, mode: str = "soft", softness: float = 0.5
) -> float:
    """Bias for a log-variance head so that ``bound_logvar(bias, lo, hi, mode) == logvar_init``.

    ``"hard"``: ``logvar_init`` itself (must lie in ``[lo, hi]``). ``"soft"``: the inverse of the
    soft bound (by bisection in float64; the bound is strictly increasing), which requires
    ``lo < logvar_init < hi`` strictly since the soft bounds are only approached asymptotically.
    """
    _check_mode(mode)
    if mode == "hard":
        if not lo <= logvar_init <= hi:
            raise ValueError(f"logvar_init {logvar_init} outside [{lo}, {hi}]")
        return float(logvar_init)
    if not lo < logvar_init < hi:
        raise ValueError(
            f"soft bounds are open: logvar_init {logvar_init} must lie strictly in ({lo}, {hi})"
        )
    a, b = logvar_init - 1.0, logvar_init + 1.0
    while _soft_bound_np(a, lo, hi, softness) > logvar_init:
        a -= 2.0 * (logvar_init - a)
    while _soft_bound_np(b, lo, hi, softness) < logvar_init:
        b += 2.0 * (b - logvar_init)
    for _ in range(200):
        m = 0.5 * (a + b)
        if _soft_bound_np(m, lo, hi, softness) < logvar_init:
            a = m
        else:
            b = m
    return 0.5 * (a + b)
