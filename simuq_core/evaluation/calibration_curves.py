"""Calibration curves of predicted (aleatoric) variance maps (docs/design.md §6): the binned
calibration curve with bootstrap intervals, the sparsification curves behind AUSE, and the PIT
histogram.

Conventions as in :mod:`simuq_core.evaluation.metrics` (an error map ``err = pred − gt``, a
variance map ``var`` of the same shape ``S``, an optional boolean ``mask``); each function returns
arrays to plot (``simuq_core.reports.plots``) rather than one number. The scalar AUSE of
:func:`simuq_core.evaluation.metrics.calibration_metrics` is :func:`sparsification_from_sorted`'s.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from simuq_core.evaluation.calibration_inputs import (
    bin_means,
    check_positive_int,
    equal_count_starts,
    err_var,
)

__all__ = [
    "CalibrationCurve",
    "PITHistogram",
    "Sparsification",
    "calibration_curve",
    "pit_histogram",
    "sparsification",
    "sparsification_from_sorted",
]


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


def sparsification_from_sorted(e2_by_v: np.ndarray, e2_sorted: np.ndarray, n_fractions: int
                               ) -> Sparsification:
    """:func:`sparsification` of the squared errors sorted by ascending ``v`` (``e2_by_v``) and by
    themselves (``e2_sorted``), ``(N,)`` each."""
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
    check_positive_int("n_fractions", n_fractions)
    e, v = err_var(err, var, mask)
    e2 = e * e
    return sparsification_from_sorted(e2[np.argsort(v, kind="stable")], np.sort(e2), n_fractions)


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
        As in :func:`~simuq_core.evaluation.metrics.calib_ratio`, shape ``S``.
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
    _check_curve_options(n_bins, binning, min_count, n_bootstrap, confidence, max_resample)
    e, v = err_var(err, var, mask)
    n = v.size
    if n < min_count:
        raise ValueError(f"need at least min_count={min_count} pixels for one bin, got {n}")
    order = np.argsort(v, kind="stable")
    v_sorted, e2_sorted = v[order], (e * e)[order]
    if binning == "equal_count":
        starts, edges = _equal_count_bins(v_sorted, n_bins, min_count)
    else:
        starts, edges = _log_bins(v_sorted, n_bins, min_count)

    counts = np.diff(np.append(starts, n))
    mean_var = bin_means(v_sorted, starts)
    mean_sq_err = bin_means(e2_sorted, starts)
    ci_low, ci_high = _bootstrap_ci(e2_sorted, starts, counts, mean_sq_err, n_bootstrap=n_bootstrap,
                                    confidence=confidence, max_resample=max_resample, seed=seed)
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


def _check_curve_options(n_bins: int, binning: str, min_count: int, n_bootstrap: int,
                         confidence: float, max_resample: int) -> None:
    """Raises ``ValueError`` for an invalid option of :func:`calibration_curve`."""
    check_positive_int("n_bins", n_bins)
    check_positive_int("min_count", min_count)
    check_positive_int("n_bootstrap", n_bootstrap)
    check_positive_int("max_resample", max_resample)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if binning not in ("equal_count", "log"):
        raise ValueError(f"binning must be 'equal_count' or 'log', got {binning!r}")


def _equal_count_bins(v_sorted: np.ndarray, n_bins: int, min_count: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Bin starts and edges of ``binning="equal_count"``: contiguous chunks of the sorted
    variances, at most ``N // min_count`` of them; the edges are each bin's smallest ``v`` and the
    largest ``v`` overall."""
    starts = equal_count_starts(v_sorted.size, min(n_bins, v_sorted.size // min_count))
    return starts, np.append(v_sorted[starts], v_sorted[-1])


def _log_bins(v_sorted: np.ndarray, n_bins: int, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin starts and edges of ``binning="log"``: ``n_bins`` log-spaced intervals of
    ``[min v, max v]``, sparse ones merged upwards (:func:`_merge_sparse_bins`)."""
    n = v_sorted.size
    lo, hi = v_sorted[0], v_sorted[-1]
    log_edges = np.geomspace(lo, hi, n_bins + 1) if hi > lo else np.array([lo, hi])
    # Pixels exactly on an inner edge go to the upper bin; the top edge is inclusive.
    raw_starts = np.searchsorted(v_sorted, log_edges[1:-1], side="left")
    bounds = np.concatenate([[0], raw_starts, [n]])
    keep = _merge_sparse_bins(np.diff(bounds), min_count)
    return bounds[:-1][keep], np.append(log_edges[:-1][keep], log_edges[-1])


def _bootstrap_ci(e2_sorted: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                  mean_sq_err: np.ndarray, *, n_bootstrap: int, confidence: float,
                  max_resample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval on each bin's ``mean_sq_err``, ``(B,)`` low and high bounds
    (m-out-of-n above ``max_resample`` pixels; see :func:`calibration_curve`)."""
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
    return ci_low, ci_high


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
    check_positive_int("n_bins", n_bins)
    e, v = err_var(err, var, mask)
    counts, edges = np.histogram(special.ndtr(e / np.sqrt(v)), bins=n_bins, range=(0.0, 1.0))
    return PITHistogram(counts=counts, edges=edges)
