"""Tests for simuq_core.evaluation.metrics (docs/design.md §6).

Tolerances are derived from the sample size: for N pixels, a proportion p has binomial SE
``√(p(1−p)/N)`` and a mean of ``χ²₁`` variables has relative SE ``√(2/N)``; checks use 5 SE unless a
comment says otherwise. All generators are seeded, so every check is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from simuq_core.evaluation import calibration_curves as cc
from simuq_core.evaluation import metrics

N = 200_000
P68 = math.erf(1 / math.sqrt(2))  # 0.6827
P95 = math.erf(1.96 / math.sqrt(2))  # 0.9500


def _calibrated(n: int = N, seed: int = 0, lo: float = 0.1, hi: float = 10.0):
    """Heteroscedastic perfectly calibrated data: v log-uniform on [lo, hi], e ~ N(0, v)."""
    rng = np.random.default_rng(seed)
    v = np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))
    e = rng.normal(size=n) * np.sqrt(v)
    return e, v


@pytest.fixture(scope="module")
def calibrated():
    return _calibrated()


@pytest.fixture(scope="module")
def calibrated_metrics(calibrated):
    e, v = calibrated
    gt = np.random.default_rng(1).normal(size=N)
    return metrics.calibration_metrics(gt + e, gt, v, component="emitter")


# ----------------------------------------------------------------------------------------------
# Perfect calibration
# ----------------------------------------------------------------------------------------------


def test_calibrated_scalars(calibrated, calibrated_metrics):
    e, v = calibrated
    m = calibrated_metrics
    # ZMS = mean(χ²₁): SE √(2/N). calib_ratio = Σ v χ² / Σ v: SE √(2 Σv²) / Σv.
    assert m["emitter_zms"] == pytest.approx(1.0, abs=5 * math.sqrt(2 / N))
    ratio_se = math.sqrt(2 * np.sum(v**2)) / np.sum(v)
    assert m["emitter_calib_ratio"] == pytest.approx(1.0, abs=5 * ratio_se)
    # mean(z): SE 1/√N; var(z) = mean(z²) − mean(z)²: SE ≈ √(2/N).
    assert m["emitter_z_mean"] == pytest.approx(0.0, abs=5 / math.sqrt(N))
    assert m["emitter_z_var"] == pytest.approx(1.0, abs=5 * math.sqrt(2 / N))
    for key, p in (("emitter_coverage_68", P68), ("emitter_coverage_95", P95)):
        assert m[key] == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / N))
    # area ≤ sup_p |obs(p) − p| = a KS statistic of |z|; its 99.9% quantile is 1.95/√N.
    assert m["emitter_miscal_area"] < 2.5 / math.sqrt(N)
    assert m["emitter_n_pixels"] == N
    assert m["emitter_rmse"] == pytest.approx(math.sqrt(np.mean(e**2)), rel=1e-12)
    assert m["emitter_rmv"] == pytest.approx(math.sqrt(np.mean(v)), rel=1e-12)


def test_public_functions_agree_with_flat_dict(calibrated, calibrated_metrics):
    e, v = calibrated
    m = calibrated_metrics
    zm = metrics.z_moments(e, v)
    corr = metrics.variance_error_correlation(e, v)
    expected = {
        "calib_ratio": metrics.calib_ratio(e, v),
        "zms": zm.zms,
        "z_mean": zm.mean,
        "z_var": zm.var,
        "corr": corr.pearson,
        "corr_ref": corr.reference,
        "spearman": corr.spearman,
        "coverage_68": metrics.interval_coverage(e, v, z_bound=1.0),
        "coverage_95": metrics.interval_coverage(e, v, z_bound=1.96),
        "miscal_area": metrics.miscalibration_area(e, v),
        "ence": metrics.ence(e, v),
        "ause": cc.sparsification(e, v).ause,
        "nll": metrics.gaussian_nll(e, v),
    }
    for name, value in expected.items():
        # gt + e − gt differs from e by rounding only.
        assert m[f"emitter_{name}"] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_calibration_curve_calibrated_bins(calibrated):
    e, v = calibrated
    curve = cc.calibration_curve(e, v, n_bins=20, binning="equal_count", seed=0)
    assert curve.count.sum() == N and len(curve.count) == 20
    assert np.all(np.diff(curve.mean_var) > 0)
    starts = np.cumsum(np.append(0, curve.count[:-1]))
    v_by_v = np.sort(v)
    for b, (start, count) in enumerate(zip(starts, curve.count, strict=True)):
        vb = v_by_v[start : start + count]
        # Ratio of means: SE √(2 Σv²)/Σv given v (≈ √(2/n_b) for a narrow bin).
        se = math.sqrt(2 * np.sum(vb**2)) / np.sum(vb)
        assert curve.mean_sq_err[b] / curve.mean_var[b] == pytest.approx(1.0, abs=5 * se)
        assert curve.ci_low[b] < curve.mean_sq_err[b] < curve.ci_high[b]
    np.testing.assert_allclose(curve.rmse**2, curve.mean_sq_err)
    np.testing.assert_allclose(curve.rmv**2, curve.mean_var)


@pytest.mark.parametrize("max_resample", [10_000, 1_000])  # exact bootstrap / m-out-of-n
def test_bootstrap_interval_width(calibrated, max_resample):
    e, v = calibrated
    curve = cc.calibration_curve(e, v, n_bins=20, max_resample=max_resample, seed=3)
    starts = np.cumsum(np.append(0, curve.count[:-1]))
    e2_by_v = (e**2)[np.argsort(v, kind="stable")]
    se = np.array(
        [
            np.std(e2_by_v[s : s + c]) / math.sqrt(c)
            for s, c in zip(starts, curve.count, strict=True)
        ]
    )
    width_ratio = (curve.ci_high - curve.ci_low) / (2 * 1.96 * se)
    # 200 resamples: each 2.5%/97.5% quantile has SD ≈ √(.025·.975/200)/φ(1.96) ≈ 0.19 SE, so one
    # half-width is off by ≈ 7%; 20 bins average that to ≈ 2%. χ²'s skew adds a little.
    assert np.all(np.abs(width_ratio - 1) < 0.35)
    assert abs(np.mean(width_ratio) - 1) < 0.1


def test_calibration_curve_is_seeded(calibrated):
    e, v = calibrated
    a = cc.calibration_curve(e[:5000], v[:5000], seed=7)
    b = cc.calibration_curve(e[:5000], v[:5000], seed=7)
    c = cc.calibration_curve(e[:5000], v[:5000], seed=8)
    np.testing.assert_array_equal(a.ci_low, b.ci_low)
    assert not np.array_equal(a.ci_low, c.ci_low)


@pytest.mark.parametrize(
    ("binning", "n", "n_bins", "expected_bins"),
    [
        ("equal_count", 500, 30, 500 // 30),  # too few pixels: fewer bins
        ("equal_count", 100_000, 20, 20),
        ("log", 500, 30, None),  # log bins at the tails are sparse and get merged
        ("log", 100_000, 20, None),
    ],
)
def test_calibration_curve_bins_min_count(binning, n, n_bins, expected_bins):
    e, v = _calibrated(n=n, seed=4, lo=1e-3, hi=1e2)
    curve = cc.calibration_curve(e, v, n_bins=n_bins, binning=binning, min_count=30)
    assert np.all(curve.count >= 30)
    assert curve.count.sum() == n  # merged, never dropped
    assert len(curve.edges) == len(curve.count) + 1
    assert np.all(np.diff(curve.edges) > 0)
    if expected_bins is not None:
        assert len(curve.count) == expected_bins
    if binning == "log":
        assert len(curve.count) <= n_bins
        # every pixel of bin b lies within [edges[b], edges[b+1]]
        v_sorted = np.sort(v)
        starts = np.cumsum(np.append(0, curve.count[:-1]))
        lo_ok = v_sorted[starts] >= curve.edges[:-1] * (1 - 1e-12)
        hi_ok = v_sorted[starts + curve.count - 1] <= curve.edges[1:] * (1 + 1e-12)
        assert np.all(lo_ok) and np.all(hi_ok)


def test_pit_histogram_flat_when_calibrated(calibrated):
    e, v = calibrated
    hist = cc.pit_histogram(e, v, n_bins=20)
    np.testing.assert_allclose(hist.edges, np.linspace(0, 1, 21))
    assert hist.counts.sum() == N
    expected = N / 20
    # Each count is binomial(N, 1/20): SD ≈ √expected.
    assert np.all(np.abs(hist.counts - expected) < 5 * math.sqrt(expected))
    # Too small a variance: mass piles up at both ends (U shape).
    over = cc.pit_histogram(e, v / 4, n_bins=20).counts
    assert over[0] > 2 * expected and over[-1] > 2 * expected and over[10] < expected


# ----------------------------------------------------------------------------------------------
# Mis-calibration and recalibration
# ----------------------------------------------------------------------------------------------


def test_wrong_shape_rescaled_variance_fools_calib_ratio_not_zms(calibrated):
    e, v = calibrated
    # Same values, wrong pixels: mean(v_wrong) == mean(v) exactly, so calib_ratio stays ≈ 1.
    # (A *constant* map would not do: then zms == calib_ratio identically.)
    v_wrong = np.random.default_rng(5).permutation(v)
    ratio_se = math.sqrt(2 * np.sum(v**2)) / np.sum(v)
    assert metrics.calib_ratio(e, v_wrong) == pytest.approx(1.0, abs=5 * ratio_se)
    # zms = E[v] E[1/v] ≈ 4.6 for log-uniform v on [0.1, 10] (Jensen: > 1 for any spread).
    zms = metrics.z_moments(e, v_wrong).zms
    assert zms > 2.0
    corr = metrics.variance_error_correlation(e, v_wrong)
    assert abs(corr.pearson) < 5 / math.sqrt(N) and abs(corr.spearman) < 5 / math.sqrt(N)


def test_sigma_scaling_restores_calibration(calibrated):
    e, v = calibrated
    v_reported = 4.0 * v
    half = N // 2
    fit, test = slice(0, half), slice(half, None)
    assert metrics.interval_coverage(e[test], v_reported[test], z_bound=1.0) > 0.9  # P(|Z|<2)
    s2 = metrics.fit_sigma_scale(e[fit], v_reported[fit])
    # s² = mean(z²)/… estimates 1/4 with relative SE √(2/half).
    assert s2 == pytest.approx(0.25, rel=5 * math.sqrt(2 / half))
    v_recal = metrics.apply_sigma_scale(v_reported[test], s2)
    assert v_recal.shape == v_reported[test].shape
    # ZMS on the test half: its own SE √(2/half) plus that of s².
    assert metrics.z_moments(e[test], v_recal).zms == pytest.approx(
        1.0, abs=5 * math.sqrt(4 / half)
    )
    coverage = metrics.interval_coverage(e[test], v_recal, z_bound=1.0)
    # binomial SE plus the effect of s² error (density 2φ(1)·SE(z-bound) ≈ 0.48·√(2/half)/2)
    assert coverage == pytest.approx(P68, abs=5 * (math.sqrt(P68 * (1 - P68) / half) + 0.003))


def test_apply_sigma_scale_rejects_bad_scale():
    with pytest.raises(ValueError, match="s2 must be finite and > 0"):
        metrics.apply_sigma_scale(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="s2 must be finite and > 0"):
        metrics.apply_sigma_scale(np.ones(3), float("nan"))


def test_pearson_matches_perfect_model_reference(calibrated):
    e, v = calibrated
    corr = metrics.variance_error_correlation(e, v)
    cv = np.std(v) / np.mean(v)
    assert corr.reference == pytest.approx(cv / math.sqrt(2 + 3 * cv**2), rel=1e-12)
    assert corr.reference < 1 / math.sqrt(3)
    # Sample Pearson with heavy-tailed e² (kurtosis of v·χ²₁ ≈ 15 + …): SE ≈ √(kurtosis/N) ≲ 0.01
    # here; we allow 0.03.
    assert corr.pearson == pytest.approx(corr.reference, abs=0.03)
    rho, _ = stats.spearmanr(v, e**2)
    assert corr.spearman == pytest.approx(rho, abs=1e-12)


def test_spearman_handles_ties():
    rng = np.random.default_rng(6)
    v = rng.integers(1, 5, size=2000).astype(float)  # heavy ties
    e = rng.normal(size=2000) * np.sqrt(v)
    e[:100] = 0.0  # ties in e² too
    rho, _ = stats.spearmanr(v, e**2)
    assert metrics.variance_error_correlation(e, v).spearman == pytest.approx(rho, abs=1e-12)


def test_constant_variance_has_no_correlation():
    e = np.random.default_rng(7).normal(size=1000)
    corr = metrics.variance_error_correlation(e, np.ones(1000))
    assert math.isnan(corr.pearson) and math.isnan(corr.spearman) and corr.reference == 0.0


def test_ence_small_when_calibrated_large_when_misscaled(calibrated):
    e, v = calibrated
    n_bins = 20
    # Calibrated: |RMSE_b/RMV_b − 1| has SD ≈ 1/√(2 n_b) per bin.
    assert metrics.ence(e, v, n_bins=n_bins) < 5 / math.sqrt(2 * N / n_bins)
    # var 4× too large: RMV = 2 RMSE in every bin → ENCE = 1/2; 4× too small: RMSE = 2 RMV → 1.
    # (±0.02 ≫ the per-bin noise 1/√(2 n_b) ≈ 0.007 scaled by at most 2.)
    assert metrics.ence(e, 4 * v, n_bins=n_bins) == pytest.approx(0.5, abs=0.02)
    assert metrics.ence(e, v / 4, n_bins=n_bins) == pytest.approx(1.0, abs=0.04)


def test_ause_oracle_zero_and_random_worse(calibrated):
    e, v = calibrated
    oracle = cc.sparsification(e, e**2)  # ranking by the actual error
    assert oracle.ause == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(oracle.model, oracle.oracle, rtol=1e-12)
    informative = cc.sparsification(e, v)
    random_v = np.random.default_rng(8).permutation(v)
    uninformative = cc.sparsification(e, random_v)
    assert informative.model[0] == pytest.approx(1.0)
    assert informative.oracle[0] == pytest.approx(1.0)
    assert np.all(informative.model >= informative.oracle - 1e-12)
    assert informative.fractions.shape == informative.model.shape == (100,)
    # v spans two decades, so the informative ranking is far better than a random one.
    assert uninformative.ause > informative.ause + 0.1
    assert informative.ause > 0


def test_nll_matches_analytic_expectation(calibrated):
    e, v = calibrated
    gt = np.zeros(N)
    nll = metrics.calibration_metrics(e, gt, v, component="x")["x_nll"]
    expected = np.mean(0.5 * (np.log(2 * np.pi * v) + 1.0))
    # nll − expected = 0.5 mean(z² − 1): SE 0.5 √(2/N).
    assert nll == pytest.approx(expected, abs=5 * 0.5 * math.sqrt(2 / N))
    # ... and the NLL is worse for a wrong scale.
    assert metrics.gaussian_nll(e, 4 * v) > nll + 0.1


# ----------------------------------------------------------------------------------------------
# Agreement with uncertainty-toolbox
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uct_calibration():
    return pytest.importorskip(
        "uncertainty_toolbox.metrics_calibration",
        reason="uncertainty-toolbox is not importable in this environment",
    )


@pytest.mark.parametrize("scale", [1.0, 0.3, 3.0])
def test_agrees_with_uncertainty_toolbox(uct_calibration, scale):
    rng = np.random.default_rng(9)
    n = 5000  # the toolbox's interval coverage loops in Python
    v = np.exp(rng.uniform(-2, 2, size=n))
    y = rng.normal(size=n)
    y_pred = y + rng.normal(size=n) * np.sqrt(v)
    y_std = np.sqrt(scale * v)
    err, var = y_pred - y, y_std**2
    # uncertainty-toolbox 0.1.1 runs warning-free here, so no filter: a new warning should surface.
    uct_area = uct_calibration.miscalibration_area(y_pred, y_std, y, num_bins=100)
    uct_exp, uct_obs = uct_calibration.get_proportion_lists_vectorized(
        y_pred, y_std, y, num_bins=100
    )
    uct_cov = [
        uct_calibration.get_proportion_in_interval(y_pred, y_std, y, quantile=p) for p in (P68, P95)
    ]
    assert metrics.miscalibration_area(err, var, n_levels=100) == pytest.approx(uct_area, abs=1e-12)
    exp, obs = metrics.calibration_proportions(err, var, n_levels=100)
    np.testing.assert_allclose(exp, uct_exp, atol=1e-15)
    np.testing.assert_allclose(obs, uct_obs, atol=1e-15)
    # Strict vs inclusive bound differs only for a pixel exactly on it (probability 0).
    assert metrics.interval_coverage(err, var, z_bound=1.0) == pytest.approx(uct_cov[0], abs=1e-12)
    assert metrics.interval_coverage(err, var, z_bound=1.96) == pytest.approx(
        uct_cov[1], abs=1 / n
    )  # Φ⁻¹(0.5 + P95/2) = 1.96 up to rounding: at most one pixel may differ
    if scale != 1.0:
        assert uct_area > 0.05  # the comparison is not trivially 0 == 0


# ----------------------------------------------------------------------------------------------
# Flat dict, masks and input validation
# ----------------------------------------------------------------------------------------------


def test_flat_dict_names_and_finiteness(calibrated_metrics):
    assert list(calibrated_metrics) == [f"emitter_{n}" for n in metrics.METRIC_NAMES]
    assert list(calibrated_metrics) == metrics.metric_names("emitter")
    assert len(set(metrics.METRIC_NAMES)) == len(metrics.METRIC_NAMES) == 16
    for name, value in calibrated_metrics.items():
        assert isinstance(value, float) and math.isfinite(value), name


def test_mask_equals_subset():
    rng = np.random.default_rng(10)
    shape = (4, 64, 64)
    gt = rng.normal(size=shape)
    v = np.exp(rng.uniform(-2, 2, size=shape))
    pred = gt + rng.normal(size=shape) * np.sqrt(v) * 1.3
    mask = rng.random(shape) < 0.4
    # Garbage outside the mask must be ignored, not validated.
    v_dirty = v.copy()
    v_dirty[~mask] = np.where(rng.random((~mask).sum()) < 0.5, np.nan, -1.0)
    masked = metrics.calibration_metrics(pred, gt, v_dirty, component="pattern", mask=mask)
    subset = metrics.calibration_metrics(pred[mask], gt[mask], v[mask], component="pattern")
    assert masked == subset
    assert masked["pattern_n_pixels"] == mask.sum()
    # ... and the mask matters: all pixels give different numbers.
    full = metrics.calibration_metrics(pred, gt, v, component="pattern")
    assert full["pattern_zms"] != masked["pattern_zms"]
    assert metrics.ence(pred - gt, v_dirty, mask=mask) == metrics.ence((pred - gt)[mask], v[mask])


def test_float32_and_nd_inputs_are_accepted():
    e, v = _calibrated(n=4096, seed=11)
    gt = np.full(4096, 1000.0, dtype=np.float32)
    pred = (gt + e).astype(np.float32)
    out = metrics.calibration_metrics(
        pred.reshape(64, 64),
        gt.reshape(64, 64),
        v.astype(np.float32).reshape(64, 64),
        component="emitter",
    )
    assert all(math.isfinite(x) for x in out.values())


def _good(n: int = 10):
    return np.zeros(n), np.ones(n), np.ones(n)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gt": np.zeros(9)}, r"shape mismatch: pred \(10,\), gt \(9,\), var \(10,\)"),
        ({"var": np.ones((2, 5))}, r"var \(2, 5\)"),
        ({"var": np.r_[np.ones(9), 0.0]}, "1 non-positive"),
        ({"var": np.r_[np.ones(9), -2.0]}, "1 non-positive"),
        ({"var": np.r_[np.ones(8), np.nan, np.inf]}, "2 non-finite"),
        ({"pred": np.r_[np.zeros(9), np.nan]}, "pred has 1 non-finite"),
        ({"mask": np.zeros(10, dtype=bool)}, "no pixels selected"),
        ({"mask": np.ones(10)}, "mask must be boolean"),
        ({"mask": np.ones(9, dtype=bool)}, r"mask has shape \(9,\)"),
        ({"component": ""}, "component must be"),
        ({"component": "emitter zms"}, "component must be"),
        ({"n_bins": 0}, "n_bins must be"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    pred, gt, var = _good()
    args = {"pred": pred, "gt": gt, "var": var, "component": "emitter"} | kwargs
    with pytest.raises(ValueError, match=match):
        metrics.calibration_metrics(**args)


def test_bad_inputs_raise_in_single_metrics():
    with pytest.raises(ValueError, match=r"err \(3,\), var \(4,\)"):
        metrics.z_moments(np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="non-positive"):
        metrics.gaussian_nll(np.zeros(3), np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="no pixels selected"):
        cc.sparsification(np.zeros(0), np.ones(0))
    with pytest.raises(ValueError, match="binning must be"):
        cc.calibration_curve(np.zeros(100), np.ones(100), binning="linear")
    with pytest.raises(ValueError, match="min_count=30"):
        cc.calibration_curve(np.zeros(20), np.ones(20))


def test_pit_uses_standard_normal_cdf():
    # Φ(z) for three hand-picked z: one per PIT bin of 3.
    e = np.array([-1.0, 0.0, 2.0])
    hist = cc.pit_histogram(e, np.ones(3), n_bins=3)
    assert special.ndtr(-1.0) < 1 / 3 < special.ndtr(0.0) < 2 / 3 < special.ndtr(2.0)
    np.testing.assert_array_equal(hist.counts, [1, 1, 1])
