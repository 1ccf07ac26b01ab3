"""Scalar calibration metrics for predicted (aleatoric) variance maps (docs/design.md §6).

Conventions
-----------
Every metric compares an error map ``err = pred - gt`` with a predicted variance map ``var``. The
two may have any shape ``S`` (e.g. ``(H, W)`` or ``(B, H, W)``) as long as it is the same; an
optional boolean ``mask`` of shape ``S`` selects the pixels that count (``None``: all of them). Only
the selected pixels are validated, so a variance map may hold NaN or 0 outside the mask. With
``z = err / sqrt(var)``:

- ``calib_ratio = mean(err²) / mean(var)`` and ``zms = mean(z²)``; a wrongly shaped but globally
  rescaled map has ``calib_ratio ≈ 1`` and ``zms ≠ 1``, so both are reported.
- ``corr = Pearson(var, err²)``, reported beside its perfect-Gaussian-model value
  ``corr_ref = CV / sqrt(2 + 3 CV²)`` (``CV = std(var) / mean(var)``), plus Spearman.
- coverage of the central 68% / 95% Gaussian intervals (``|z| < 1``, ``|z| < 1.96``), the
  miscalibration area, ENCE, AUSE and the Gaussian NLL.

The curves (binned calibration curve, sparsification, PIT histogram of ``Φ(z)``) are in
:mod:`simuq_core.evaluation.calibration_curves`; input handling shared by both is in
:mod:`simuq_core.evaluation.calibration_inputs`.

Everything is NumPy in float64, vectorised over pixels (the only Python loops run over bins), so a
``10⁷``-pixel map takes a few seconds; the cost is dominated by three ``O(N log N)`` sorts.
:func:`calibration_metrics` computes all scalar metrics at once, sharing those sorts, and returns
them under the stable names ``f"{component}_{name}"`` for ``name`` in :data:`METRIC_NAMES`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from simuq_core.evaluation.calibration_curves import sparsification_from_sorted
from simuq_core.evaluation.calibration_inputs import (
    bin_means,
    check_finite,
    check_positive_int,
    check_variance,
    equal_count_starts,
    err_var,
    select_flat,
)

__all__ = [
    "CorrelationResult",
    "METRIC_NAMES",
    "ZMoments",
    "apply_sigma_scale",
    "calib_ratio",
    "calibration_metrics",
    "calibration_proportions",
    "ence",
    "fit_sigma_scale",
    "gaussian_nll",
    "interval_coverage",
    "metric_names",
    "miscalibration_area",
    "variance_error_correlation",
    "z_moments",
]

#: Scalar metrics returned by :func:`calibration_metrics`, each as ``f"{component}_{name}"``:
#:
#: - ``calib_ratio``: ``mean(e²) / mean(v)``;
#: - ``zms``, ``z_mean``, ``z_var``: ``mean(z²)``, ``mean(z)``, ``var(z)`` (ddof 0);
#: - ``corr``, ``corr_ref``, ``spearman``: Pearson ``(v, e²)``, its perfect-model reference
#:   ``CV/√(2+3CV²)``, Spearman ``(v, e²)`` (NaN when ``v`` is constant);
#: - ``coverage_68``, ``coverage_95``: fraction with ``|z| < 1`` and ``|z| < 1.96``;
#: - ``miscal_area``: miscalibration area of the centred intervals (``n_levels`` levels);
#: - ``ence``: expected normalised calibration error over ``n_bins`` equal-count bins of ``v``;
#: - ``ause``: area under the sparsification error (RMSE) curve minus the oracle curve;
#: - ``nll``: mean Gaussian negative log-likelihood, ``0.5 (log(2π v) + e²/v)``;
#: - ``rmse``, ``rmv``: ``√mean(e²)`` and ``√mean(v)``;
#: - ``n_pixels``: number of selected pixels.
METRIC_NAMES: tuple[str, ...] = (
    "calib_ratio",
    "zms",
    "z_mean",
    "z_var",
    "corr",
    "corr_ref",
    "spearman",
    "coverage_68",
    "coverage_95",
    "miscal_area",
    "ence",
    "ause",
    "nll",
    "rmse",
    "rmv",
    "n_pixels",
)

# Half-widths (in σ) of the central 68.27% and 95% Gaussian intervals.
_Z_68 = 1.0
_Z_95 = 1.96
_COMPONENT_RE = re.compile(r"[A-Za-z0-9_]+")


class ZMoments(NamedTuple):
    """Moments of the standardised error ``z = e / √v`` (all ``1.0``, ``0.0``, ``1.0`` if ideal)."""

    zms: float
    """``mean(z²)``, the NLL-optimal variance scale."""
    mean: float
    """``mean(z)``; a bias in ``pred`` shows here."""
    var: float
    """``var(z)`` with ddof 0, i.e. ``zms - mean²``."""


class CorrelationResult(NamedTuple):
    """Association between predicted variance and squared error."""

    pearson: float
    """Pearson correlation of ``v`` and ``e²``."""
    reference: float
    """Pearson value a perfect Gaussian model would reach, ``CV / √(2 + 3 CV²) ≤ 1/√3``."""
    spearman: float
    """Spearman rank correlation of ``v`` and ``e²`` (average ranks for ties)."""


# ----------------------------------------------------------------------------------------------
# Private cores (flat, validated float64 inputs; shared by calibration_metrics)
# ----------------------------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation, NaN when either input is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    xc = x - x.mean()
    yc = y - y.mean()
    return float(np.dot(xc, yc) / np.sqrt(np.dot(xc, xc) * np.dot(yc, yc)))


def _reference_correlation(v: np.ndarray) -> float:
    """``CV / √(2 + 3 CV²)``: Pearson(v, e²) when ``e ~ N(0, v)`` exactly.

    With ``e² = v χ²₁``: ``cov(v, e²) = Var v`` and ``Var e² = 3 E[v²] − E[v]²``.
    """
    cv = v.std() / v.mean()
    return float(cv / np.sqrt(2.0 + 3.0 * cv**2))


def _average_ranks(x: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` (ties share their average rank) given ``order = argsort(x)``, ``(N,)``."""
    x_sorted = x[order]
    starts_group = np.empty(x.size, dtype=bool)
    starts_group[0] = True
    np.not_equal(x_sorted[1:], x_sorted[:-1], out=starts_group[1:])
    ranks = np.empty(x.size, dtype=np.float64)
    if starts_group.all():  # no ties (the usual case for continuous data)
        ranks[order] = np.arange(x.size, dtype=np.float64)
        return ranks
    starts = np.flatnonzero(starts_group)
    counts = np.diff(np.append(starts, x.size))
    ranks[order] = np.repeat(starts + 0.5 * (counts - 1), counts)
    return ranks


def _proportions(abs_z_sorted: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected and observed proportions of centred Gaussian intervals, ``(n_levels,)`` each."""
    expected = np.linspace(0.0, 1.0, n_levels)
    half_width = special.ndtri(0.5 + 0.5 * expected)  # 0 at level 0, inf at level 1
    observed = np.searchsorted(abs_z_sorted, half_width, side="right") / abs_z_sorted.size
    return expected, observed


def _area_between(x: np.ndarray, d: np.ndarray) -> float:
    """Exact ``∫ |d|`` for ``d`` piecewise linear through ``(x, d)``, sign changes included."""
    dl, dr, dx = d[:-1], d[1:], np.diff(x)
    crosses = dl * dr < 0
    abs_sum = np.abs(dl) + np.abs(dr)
    # A segment whose sign flips is two triangles meeting at its root.
    hourglass = 0.5 * dx * (dl**2 + dr**2) / np.where(crosses, abs_sum, 1.0)
    trapezoid = 0.5 * dx * np.abs(dl + dr)
    return float(np.sum(np.where(crosses, hourglass, trapezoid)))


def _ence(v_by_v: np.ndarray, e2_by_v: np.ndarray, n_bins: int) -> float:
    starts = equal_count_starts(v_by_v.size, n_bins)
    rmv = np.sqrt(bin_means(v_by_v, starts))
    rmse = np.sqrt(bin_means(e2_by_v, starts))
    return float(np.mean(np.abs(rmv - rmse) / rmv))


def _nll(e2: np.ndarray, v: np.ndarray) -> float:
    return float(0.5 * np.mean(np.log(2.0 * np.pi * v) + e2 / v))


# ----------------------------------------------------------------------------------------------
# Public metrics
# ----------------------------------------------------------------------------------------------


def calib_ratio(err: ArrayLike, var: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Global calibration ratio ``mean(e²) / mean(v)``.

    Parameters
    ----------
    err : array_like, shape ``S``
        Error ``pred - gt``.
    var : array_like, shape ``S``
        Predicted variance, finite and > 0 on the selected pixels.
    mask : array_like of bool, shape ``S``, optional
        Pixels to use (default: all).

    Returns
    -------
    float
        1 for a calibrated global scale; blind to the *shape* of ``var`` (see :func:`z_moments`).
    """
    e, v = err_var(err, var, mask)
    return float(np.mean(e * e) / np.mean(v))


def z_moments(err: ArrayLike, var: ArrayLike, *, mask: ArrayLike | None = None) -> ZMoments:
    """Moments of ``z = e / √v``: ``mean(z²)`` (ZMS), ``mean(z)`` and ``var(z)`` (ddof 0).

    Parameters and shapes as in :func:`calib_ratio`. ZMS is 1 when calibrated and is also the
    NLL-optimal global variance scale (:func:`fit_sigma_scale`).
    """
    e, v = err_var(err, var, mask)
    z = e / np.sqrt(v)
    return ZMoments(zms=float(np.mean(z * z)), mean=float(z.mean()), var=float(z.var()))


def variance_error_correlation(
    err: ArrayLike, var: ArrayLike, *, mask: ArrayLike | None = None
) -> CorrelationResult:
    """Pearson and Spearman correlation of ``v`` and ``e²``, with the perfect-model reference.

    For ``e ~ N(0, v)`` exactly, ``corr(v, e²) = CV / √(2 + 3 CV²)`` with ``CV = std(v)/mean(v)``
    (docs/design.md §6): even a perfect model scores at most ``1/√3 ≈ 0.577``, so compare ``pearson``
    with ``reference``, not with 1. Correlations are NaN when ``v`` or ``e²`` is constant.
    Parameters and shapes as in :func:`calib_ratio`.
    """
    e, v = err_var(err, var, mask)
    e2 = e * e
    spearman = _pearson(
        _average_ranks(v, np.argsort(v, kind="stable")),
        _average_ranks(e2, np.argsort(e2, kind="stable")),
    )
    return CorrelationResult(_pearson(v, e2), _reference_correlation(v), spearman)


def interval_coverage(
    err: ArrayLike, var: ArrayLike, *, z_bound: float = _Z_68, mask: ArrayLike | None = None
) -> float:
    """Fraction of pixels inside the central interval ``|z| < z_bound``.

    ``z_bound = 1`` is the 68.27% interval and ``1.96`` the 95% one; calibrated data hit
    ``2 Φ(z_bound) − 1``. Parameters and shapes as in :func:`calib_ratio`.
    """
    if not z_bound > 0:
        raise ValueError(f"z_bound must be > 0, got {z_bound!r}")
    e, v = err_var(err, var, mask)
    return float(np.mean(np.abs(e) < z_bound * np.sqrt(v)))


def calibration_proportions(
    err: ArrayLike, var: ArrayLike, *, n_levels: int = 100, mask: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Expected vs observed proportions of centred Gaussian intervals (the calibration plot).

    For levels ``p_k = k / (n_levels − 1)``, ``k = 0 … n_levels − 1`` (uncertainty-toolbox's
    ``np.linspace(0, 1, num_bins)``), the observed proportion is the fraction with
    ``|z| ≤ Φ⁻¹(0.5 + p_k / 2)``.

    Returns
    -------
    expected, observed : np.ndarray, shape ``(n_levels,)``
    """
    check_positive_int("n_levels", n_levels, minimum=2)
    e, v = err_var(err, var, mask)
    return _proportions(np.sort(np.abs(e) / np.sqrt(v)), n_levels)


def miscalibration_area(
    err: ArrayLike, var: ArrayLike, *, n_levels: int = 100, mask: ArrayLike | None = None
) -> float:
    """Area between the interval calibration curve and the diagonal.

    ``A = ∫₀¹ |obs(p) − p| dp`` with ``obs`` linearly interpolated between the
    :func:`calibration_proportions` points; segments crossing the diagonal are integrated exactly
    (two triangles). This reproduces ``uncertainty_toolbox.metrics_calibration.miscalibration_area``
    (``prop_type="interval"``, ``num_bins=n_levels``) for a Gaussian with mean ``pred`` and standard
    deviation ``√var``. Range ``[0, 0.5]``; 0 when calibrated, up to sampling noise
    (``A ≤ sup_p |obs − p|``, a Kolmogorov–Smirnov statistic of ``|z|``, ``O(1/√N)``).
    """
    expected, observed = calibration_proportions(err, var, n_levels=n_levels, mask=mask)
    return _area_between(expected, observed - expected)


def ence(
    err: ArrayLike, var: ArrayLike, *, n_bins: int = 20, mask: ArrayLike | None = None
) -> float:
    """Expected normalised calibration error over equal-count bins of ``v``.

    ``ENCE = mean_b |RMV_b − RMSE_b| / RMV_b`` with ``RMV_b = √mean_b(v)``, ``RMSE_b = √mean_b(e²)``
    (Levi et al. 2022). Pixels are sorted by ``v`` and split into ``min(n_bins, N)`` contiguous
    chunks of near-equal size. Even calibrated data score ``≈ √(n_bins / (π N))`` (sampling noise
    of each ``RMSE_b``), so the value grows with ``√n_bins``: always state ``n_bins``.
    """
    check_positive_int("n_bins", n_bins)
    e, v = err_var(err, var, mask)
    order = np.argsort(v, kind="stable")
    return _ence(v[order], (e * e)[order], n_bins)


def gaussian_nll(err: ArrayLike, var: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Mean Gaussian negative log-likelihood ``mean(0.5 (log(2π v) + e² / v))`` (nats/pixel)."""
    e, v = err_var(err, var, mask)
    return _nll(e * e, v)


def fit_sigma_scale(err: ArrayLike, var: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Fit σ-scaling on a calibration split: ``s² = mean(z²)``, the NLL-optimal factor for ``v``.

    Apply it to a *different* (test) split with :func:`apply_sigma_scale` (docs/design.md §6).
    """
    return z_moments(err, var, mask=mask).zms


def apply_sigma_scale(var: ArrayLike, s2: float) -> np.ndarray:
    """Recalibrated variance ``var · s2``, same shape as ``var``.

    Parameters
    ----------
    var : array_like, shape ``S``
        Predicted variance.
    s2 : float
        Scale from :func:`fit_sigma_scale`, finite and > 0.
    """
    if not (np.isfinite(s2) and s2 > 0):
        raise ValueError(f"s2 must be finite and > 0, got {s2!r}")
    return np.asarray(var) * s2


# ----------------------------------------------------------------------------------------------
# Everything at once
# ----------------------------------------------------------------------------------------------


def metric_names(component: str) -> list[str]:
    """The keys :func:`calibration_metrics` returns for ``component``, in :data:`METRIC_NAMES`
    order."""
    _check_component(component)
    return [f"{component}_{name}" for name in METRIC_NAMES]


def _check_component(component: str) -> None:
    if not isinstance(component, str) or not _COMPONENT_RE.fullmatch(component):
        raise ValueError(
            f"component must be a non-empty name of letters, digits and '_', got {component!r}"
        )


def calibration_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    var: ArrayLike,
    *,
    component: str,
    mask: ArrayLike | None = None,
    n_bins: int = 20,
    n_levels: int = 100,
    n_fractions: int = 100,
) -> dict[str, float]:
    """All scalar calibration metrics of one component as a flat dict.

    Parameters
    ----------
    pred, gt : array_like, shape ``S``
        Prediction and ground truth (``e = pred − gt`` is formed in float64).
    var : array_like, shape ``S``
        Predicted variance of ``pred``, finite and > 0 on the selected pixels.
    component : str
        Key prefix, e.g. ``"emitter"`` → ``"emitter_zms"``.
    mask : array_like of bool, shape ``S``, optional
        Pixels to use (default: all). Metrics on a mask equal metrics on ``x[mask]``.
    n_bins : int
        Equal-count bins for ENCE.
    n_levels : int
        Interval levels for the miscalibration area.
    n_fractions : int
        Grid of removed fractions for AUSE.

    Returns
    -------
    dict[str, float]
        ``f"{component}_{name}"`` for every ``name`` in :data:`METRIC_NAMES` (see there), as
        Python floats (``n_pixels`` too, for metric loggers).
    """
    _check_component(component)
    check_positive_int("n_bins", n_bins)
    check_positive_int("n_levels", n_levels, minimum=2)
    check_positive_int("n_fractions", n_fractions)
    p, g, v = select_flat({"pred": pred, "gt": gt, "var": var}, mask)
    check_finite("pred", p)
    check_finite("gt", g)
    check_variance(v)
    e = p - g
    del p, g
    n = e.size
    e2 = e * e
    z = e / np.sqrt(v)
    abs_z_sorted = np.sort(np.abs(z))

    order_v = np.argsort(v, kind="stable")
    order_e2 = np.argsort(e2, kind="stable")
    v_by_v, e2_by_v = v[order_v], e2[order_v]
    spearman = _pearson(_average_ranks(v, order_v), _average_ranks(e2, order_e2))
    expected, observed = _proportions(abs_z_sorted, n_levels)

    mean_e2, mean_v = float(e2.mean()), float(v.mean())
    zms = float(np.mean(z * z))
    z_mean = float(z.mean())
    values = {
        "calib_ratio": mean_e2 / mean_v,
        "zms": zms,
        "z_mean": z_mean,
        "z_var": float(z.var()),
        "corr": _pearson(v, e2),
        "corr_ref": _reference_correlation(v),
        "spearman": spearman,
        "coverage_68": np.searchsorted(abs_z_sorted, _Z_68, side="left") / n,
        "coverage_95": np.searchsorted(abs_z_sorted, _Z_95, side="left") / n,
        "miscal_area": _area_between(expected, observed - expected),
        "ence": _ence(v_by_v, e2_by_v, n_bins),
        "ause": sparsification_from_sorted(e2_by_v, e2[order_e2], n_fractions).ause,
        "nll": _nll(e2, v),
        "rmse": np.sqrt(mean_e2),
        "rmv": np.sqrt(mean_v),
        "n_pixels": n,
    }
    return {f"{component}_{name}": float(values[name]) for name in METRIC_NAMES}
