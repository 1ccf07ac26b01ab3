"""Calibration metrics for predicted (aleatoric) variance maps (docs/design.md §6).

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
  miscalibration area, ENCE, AUSE, the Gaussian NLL and the PIT histogram of ``Φ(z)``.

Everything is NumPy in float64, vectorised over pixels (the only Python loops run over bins), so a
``10⁷``-pixel map takes a few seconds; the cost is dominated by three ``O(N log N)`` sorts.
:func:`calibration_metrics` computes all scalar metrics at once, sharing those sorts, and returns
them under the stable names ``f"{component}_{name}"`` for ``name`` in :data:`METRIC_NAMES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

__all__ = [
    "CalibrationCurve",
    "CorrelationResult",
    "METRIC_NAMES",
    "PITHistogram",
    "Sparsification",
    "ZMoments",
    "apply_sigma_scale",
    "calib_ratio",
    "calibration_curve",
    "calibration_metrics",
    "calibration_proportions",
    "ence",
    "fit_sigma_scale",
    "gaussian_nll",
    "interval_coverage",
    "metric_names",
    "miscalibration_area",
    "pit_histogram",
    "sparsification",
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


class Sparsification(NamedTuple):
    """Sparsification curves and AUSE, see :func:`sparsification`."""

    fractions: np.ndarray
    """``(F,)`` removed fractions ``0, 1/F, …, (F-1)/F``."""
    model: np.ndarray
    """``(F,)`` RMSE of the kept pixels (removed by descending ``v``), divided by the full RMSE."""
    oracle: np.ndarray
    """``(F,)`` the same with pixels removed by descending ``e²``."""
    ause: float
    """Trapezoid area of ``model - oracle`` over ``fractions`` (≥ 0; 0 for a perfect ranking)."""


class CalibrationCurve(NamedTuple):
    """Binned calibration curve (one entry per bin, bins in increasing ``v``)."""

    mean_var: np.ndarray
    """``(B,)`` mean predicted variance per bin."""
    mean_sq_err: np.ndarray
    """``(B,)`` mean squared error per bin (calibrated: equal to ``mean_var``)."""
    rmv: np.ndarray
    """``(B,)`` root mean variance, ``√mean_var``."""
    rmse: np.ndarray
    """``(B,)`` root mean squared error, ``√mean_sq_err``."""
    count: np.ndarray
    """``(B,)`` pixels per bin (each ≥ ``min_count``; they sum to the number of pixels)."""
    ci_low: np.ndarray
    """``(B,)`` lower bootstrap confidence bound on ``mean_sq_err``."""
    ci_high: np.ndarray
    """``(B,)`` upper bootstrap confidence bound on ``mean_sq_err``."""
    edges: np.ndarray
    """``(B + 1,)`` variance bin edges (log: the geometric edges kept after merging; equal-count:
    the smallest ``v`` of each bin followed by the largest ``v`` overall)."""


class PITHistogram(NamedTuple):
    """Histogram of the probability integral transform ``Φ(z)`` (flat when calibrated)."""

    counts: np.ndarray
    """``(n_bins,)`` pixel counts."""
    edges: np.ndarray
    """``(n_bins + 1,)`` bin edges on ``[0, 1]``."""


# ----------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------


def _select(arrays: Mapping[str, ArrayLike], mask: ArrayLike | None) -> list[np.ndarray]:
    """Check shapes, apply ``mask`` and return each array as flat float64, ``(N,)``."""
    named = {name: np.asarray(a) for name, a in arrays.items()}
    shapes = {name: a.shape for name, a in named.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}; all must have the same shape")
    shape = next(iter(shapes.values()))
    if mask is None:
        selected = [a.reshape(-1) for a in named.values()]
    else:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
        if mask.shape != shape:
            raise ValueError(f"mask has shape {mask.shape} but the data have shape {shape}")
        selected = [a[mask] for a in named.values()]
    if selected[0].size == 0:
        raise ValueError(f"no pixels selected (data shape {shape}, mask selects none)")
    return [a.astype(np.float64, copy=False) for a in selected]


def _check_finite(name: str, x: np.ndarray) -> None:
    n_bad = int(np.count_nonzero(~np.isfinite(x)))
    if n_bad:
        raise ValueError(f"{name} has {n_bad} non-finite (NaN/inf) value(s) on the selected pixels")


def _check_variance(var: np.ndarray) -> None:
    n_nonfinite = int(np.count_nonzero(~np.isfinite(var)))
    n_nonpositive = int(np.count_nonzero(var <= 0))
    if n_nonfinite or n_nonpositive:
        raise ValueError(
            "var must be finite and > 0 on the selected pixels; found "
            f"{n_nonfinite} non-finite (NaN/inf) and {n_nonpositive} non-positive value(s)"
        )


def _err_var(
    err: ArrayLike, var: ArrayLike, mask: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated flat float64 ``(e, v)``, ``(N,)`` each, on the selected pixels."""
    e, v = _select({"err": err, "var": var}, mask)
    _check_finite("err", e)
    _check_variance(v)
    return e, v


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


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


def _equal_count_starts(n: int, n_bins: int) -> np.ndarray:
    """Start indices of ``min(n_bins, n)`` contiguous near-equal chunks of ``n`` items."""
    n_bins = min(n_bins, n)
    return (np.arange(n_bins) * n) // n_bins


def _bin_means(x_sorted: np.ndarray, starts: np.ndarray) -> np.ndarray:
    counts = np.diff(np.append(starts, x_sorted.size))
    return np.add.reduceat(x_sorted, starts) / counts


def _ence(v_by_v: np.ndarray, e2_by_v: np.ndarray, n_bins: int) -> float:
    starts = _equal_count_starts(v_by_v.size, n_bins)
    rmv = np.sqrt(_bin_means(v_by_v, starts))
    rmse = np.sqrt(_bin_means(e2_by_v, starts))
    return float(np.mean(np.abs(rmv - rmse) / rmv))


def _sparsification(e2_by_v: np.ndarray, e2_sorted: np.ndarray, n_fractions: int) -> Sparsification:
    n = e2_by_v.size
    fractions = np.arange(n_fractions) / n_fractions
    # At least one pixel is always kept (fractions < 1).
    n_keep = n - np.minimum(np.round(fractions * n).astype(np.int64), n - 1)
    # Ascending order: the first n_keep pixels are the least uncertain (model) / smallest (oracle).
    model_mse = np.cumsum(e2_by_v)[n_keep - 1] / n_keep
    oracle_mse = np.cumsum(e2_sorted)[n_keep - 1] / n_keep
    total_rmse = np.sqrt(np.mean(e2_by_v))
    if total_rmse == 0:  # no error at all: nothing to rank, both curves vanish
        zeros = np.zeros(n_fractions)
        return Sparsification(fractions, zeros, zeros.copy(), 0.0)
    model = np.sqrt(model_mse) / total_rmse
    oracle = np.sqrt(oracle_mse) / total_rmse
    area = float(np.trapezoid(model - oracle, fractions)) if n_fractions > 1 else 0.0
    return Sparsification(fractions, model, oracle, area)


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
    e, v = _err_var(err, var, mask)
    return float(np.mean(e * e) / np.mean(v))


def z_moments(err: ArrayLike, var: ArrayLike, *, mask: ArrayLike | None = None) -> ZMoments:
    """Moments of ``z = e / √v``: ``mean(z²)`` (ZMS), ``mean(z)`` and ``var(z)`` (ddof 0).

    Parameters and shapes as in :func:`calib_ratio`. ZMS is 1 when calibrated and is also the
    NLL-optimal global variance scale (:func:`fit_sigma_scale`).
    """
    e, v = _err_var(err, var, mask)
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
    e, v = _err_var(err, var, mask)
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
    e, v = _err_var(err, var, mask)
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
    _check_positive_int("n_levels", n_levels, minimum=2)
    e, v = _err_var(err, var, mask)
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
    _check_positive_int("n_bins", n_bins)
    e, v = _err_var(err, var, mask)
    order = np.argsort(v, kind="stable")
    return _ence(v[order], (e * e)[order], n_bins)


def sparsification(
    err: ArrayLike, var: ArrayLike, *, n_fractions: int = 100, mask: ArrayLike | None = None
) -> Sparsification:
    """Sparsification curve, its oracle and AUSE (Ilg et al. 2018).

    For each removed fraction ``f = k / n_fractions`` (``k = 0 … n_fractions − 1``) the
    ``round(f N)`` pixels with the largest ``v`` are dropped and the RMSE of the rest is divided by
    the RMSE of all pixels, so both curves start at 1. RMSE (not MSE) keeps the curve in image
    units. The oracle drops the largest ``e²`` instead and is the lower bound at every ``f``.
    ``AUSE = ∫ (model − oracle) df`` by the trapezoid rule over the grid, i.e. over
    ``[0, 1 − 1/n_fractions]``.
    Ties in ``v`` keep their pixel order. If every error is 0 both curves and AUSE are 0.

    Returns
    -------
    Sparsification
        ``fractions``, ``model``, ``oracle`` of shape ``(n_fractions,)`` and the scalar ``ause``.
    """
    _check_positive_int("n_fractions", n_fractions)
    e, v = _err_var(err, var, mask)
    e2 = e * e
    return _sparsification(e2[np.argsort(v, kind="stable")], np.sort(e2), n_fractions)


def gaussian_nll(err: ArrayLike, var: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Mean Gaussian negative log-likelihood ``mean(0.5 (log(2π v) + e² / v))`` (nats/pixel)."""
    e, v = _err_var(err, var, mask)
    return _nll(e * e, v)


def calibration_curve(
    err: ArrayLike,
    var: ArrayLike,
    *,
    n_bins: int = 20,
    binning: Literal["equal_count", "log"] = "equal_count",
    min_count: int = 30,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    max_resample: int = 10_000,
    seed: int = 0,
    mask: ArrayLike | None = None,
) -> CalibrationCurve:
    """Binned calibration curve: mean ``v`` vs mean ``e²`` per bin of ``v``, with bootstrap CIs.

    Plot ``mean_var`` vs ``mean_sq_err`` (or ``rmv`` vs ``rmse``) on log–log axes with ``y = x``.

    Parameters
    ----------
    err, var, mask
        As in :func:`calib_ratio`, shape ``S``.
    n_bins : int
        Requested number of bins.
    binning : {"equal_count", "log"}
        ``"equal_count"``: contiguous chunks of the ``v``-sorted pixels; when ``N < n_bins ·
        min_count`` the bin count drops to ``N // min_count``. ``"log"``: ``n_bins`` log-spaced
        intervals of ``[min v, max v]``; a bin with fewer than ``min_count`` pixels is merged with
        its upper neighbours (the last one with its lower neighbour). No pixel is dropped.
    min_count : int
        Minimum pixels per bin (docs/design.md §6: ≥ 30).
    n_bootstrap : int
        Bootstrap resamples per bin for the CI on ``mean_sq_err``.
    confidence : float
        Two-sided level of the percentile interval.
    max_resample : int
        Bins with ``n_b > max_resample`` pixels are bootstrapped with ``m = max_resample`` draws and
        the deviations rescaled by ``√(m / n_b)`` (m-out-of-n bootstrap of a mean), which bounds
        the cost at ``n_bootstrap · max_resample`` draws per bin with the same interval width.
    seed : int
        Seed of the bootstrap generator (results are deterministic).

    Returns
    -------
    CalibrationCurve
        Arrays of shape ``(B,)`` (``edges``: ``(B + 1,)``), ``B ≤ n_bins``.
    """
    _check_positive_int("n_bins", n_bins)
    _check_positive_int("min_count", min_count)
    _check_positive_int("n_bootstrap", n_bootstrap)
    _check_positive_int("max_resample", max_resample)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if binning not in ("equal_count", "log"):
        raise ValueError(f"binning must be 'equal_count' or 'log', got {binning!r}")
    e, v = _err_var(err, var, mask)
    n = v.size
    if n < min_count:
        raise ValueError(f"need at least min_count={min_count} pixels for one bin, got {n}")
    order = np.argsort(v, kind="stable")
    v_sorted, e2_sorted = v[order], (e * e)[order]

    if binning == "equal_count":
        starts = _equal_count_starts(n, min(n_bins, n // min_count))
        edges = np.append(v_sorted[starts], v_sorted[-1])
    else:
        lo, hi = v_sorted[0], v_sorted[-1]
        log_edges = np.geomspace(lo, hi, n_bins + 1) if hi > lo else np.array([lo, hi])
        # Pixels exactly on an inner edge go to the upper bin; the top edge is inclusive.
        raw_starts = np.searchsorted(v_sorted, log_edges[1:-1], side="left")
        bounds = np.concatenate([[0], raw_starts, [n]])
        keep = _merge_sparse_bins(np.diff(bounds), min_count)
        starts = bounds[:-1][keep]
        edges = np.append(log_edges[:-1][keep], log_edges[-1])

    counts = np.diff(np.append(starts, n))
    mean_var = _bin_means(v_sorted, starts)
    mean_sq_err = _bin_means(e2_sorted, starts)

    rng = np.random.default_rng(seed)
    alpha = 1.0 - confidence
    ci_low = np.empty(starts.size)
    ci_high = np.empty(starts.size)
    for b, (start, count) in enumerate(zip(starts, counts, strict=True)):
        values = e2_sorted[start : start + count]
        m = min(int(count), max_resample)
        resampled = values[rng.integers(0, count, size=(n_bootstrap, m))].mean(axis=1)
        deviation = (resampled - mean_sq_err[b]) * np.sqrt(m / count)
        q_low, q_high = np.quantile(deviation, [alpha / 2, 1 - alpha / 2])
        ci_low[b] = mean_sq_err[b] + q_low
        ci_high[b] = mean_sq_err[b] + q_high

    return CalibrationCurve(
        mean_var=mean_var,
        mean_sq_err=mean_sq_err,
        rmv=np.sqrt(mean_var),
        rmse=np.sqrt(mean_sq_err),
        count=counts,
        ci_low=ci_low,
        ci_high=ci_high,
        edges=edges,
    )


def _merge_sparse_bins(counts: np.ndarray, min_count: int) -> np.ndarray:
    """Boolean ``(len(counts),)``: which bins start a merged group of ≥ ``min_count`` pixels.

    Groups grow upwards from each start until they hold ``min_count`` pixels; a short remainder at
    the top joins the last complete group. Requires ``counts.sum() ≥ min_count``.
    """
    keep = np.zeros(counts.size, dtype=bool)
    group_start, filled = 0, 0
    for i, c in enumerate(counts):  # loop over bins, not pixels
        filled += int(c)
        if filled >= min_count:
            keep[group_start] = True
            group_start, filled = i + 1, 0
    return keep


def pit_histogram(
    err: ArrayLike, var: ArrayLike, *, n_bins: int = 20, mask: ArrayLike | None = None
) -> PITHistogram:
    """Histogram of ``u = Φ(z)`` on ``[0, 1]`` (``n_bins`` equal-width bins).

    Calibrated: flat. U-shaped: variance too small; hump: too large; tilted: biased ``pred``.
    """
    _check_positive_int("n_bins", n_bins)
    e, v = _err_var(err, var, mask)
    counts, edges = np.histogram(special.ndtr(e / np.sqrt(v)), bins=n_bins, range=(0.0, 1.0))
    return PITHistogram(counts=counts, edges=edges)


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
    _check_positive_int("n_bins", n_bins)
    _check_positive_int("n_levels", n_levels, minimum=2)
    _check_positive_int("n_fractions", n_fractions)
    p, g, v = _select({"pred": pred, "gt": gt, "var": var}, mask)
    _check_finite("pred", p)
    _check_finite("gt", g)
    _check_variance(v)
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
        "ause": _sparsification(e2_by_v, e2[order_e2], n_fractions).ause,
        "nll": _nll(e2, v),
        "rmse": np.sqrt(mean_e2),
        "rmv": np.sqrt(mean_v),
        "n_pixels": n,
    }
    return {f"{component}_{name}": float(values[name]) for name in METRIC_NAMES}
