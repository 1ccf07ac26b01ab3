"""Quality metrics of reconstructions against known answers (simuq_core.evaluation.quality)."""

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from simuq_core.config import SimulateParams
from simuq_core.evaluation import quality as q
from simuq_core.evaluation import quality_summary as qs
from simuq_core.evaluation import resolution as rl
from simuq_core.evaluation.synthetic import widefield
from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.simulation import samples as sim

# The Hann window inflates the variance of a spectral correlation of independent noise over n
# Fourier samples from 1/n to ≈ (Σw⁴/(Σw²)²)² / n = (35/18)² / n ≈ 3.78 / n (measured 3.2 / n over
# 200 seeds, 128², n = 2652); 4 such standard deviations is the tolerance for "≈ 0".
_HANN_VAR = (35.0 / 18.0) ** 2


def _noise_tol(n: int) -> float:
    return 4.0 * math.sqrt(_HANN_VAR / n)


def _radius(n: int) -> np.ndarray:
    return np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])


def _band_limited(rng: np.random.Generator, n: int, f_max: float) -> np.ndarray:
    """White noise with every frequency ``|f| ≥ f_max`` removed (periodic, so no edge effects)."""
    return np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * (_radius(n) < f_max)).real


def _scene(rng: np.random.Generator, n: int = 96, blur: float = 0.7) -> np.ndarray:
    """A GT-like image: random points and short lines, blurred by ``blur`` px (0.7: content up to
    Nyquist)."""
    img = np.zeros((n, n))
    img[rng.integers(0, n, 60), rng.integers(0, n, 60)] = 1.0
    for _ in range(6):
        y, x = rng.integers(10, n - 10, 2)
        img[y, x:x + 8] = 1.0
    return ndimage.gaussian_filter(img, blur, mode="wrap")


def _low_pass(img: np.ndarray, k_wf: float) -> np.ndarray:
    """Widefield-like image: the spectrum times a cone OTF ``1 − |f|/k_wf``, zero beyond ``k_wf``."""
    otf = np.clip(1.0 - _radius(img.shape[0]) / k_wf, 0.0, None)
    return np.fft.ifft2(np.fft.fft2(img) * otf).real


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------


def test_shifted_copy_registers_back_to_subpixel_accuracy(rng):
    gt = _band_limited(rng, 64, 0.25)
    true_shift = np.array([0.37, -1.62])
    moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(gt), true_shift)).real
    back, shift = q.register_subpixel(2.0 * moved + 5.0, gt, upsample=50)
    # the estimate is quantised to 1/upsample = 0.02 px; a pure circular shift has no other error
    np.testing.assert_allclose(shift, -true_shift, atol=0.02)
    np.testing.assert_allclose((back - 5.0) / 2.0, gt, atol=0.05 * gt.std())
    # batches give the same shifts per image
    _, shifts = q.register_subpixel(np.stack([moved, gt]), np.stack([gt, gt]), upsample=50)
    np.testing.assert_allclose(shifts, [-true_shift, [0.0, 0.0]], atol=0.02)


def test_shift_beyond_the_bound_is_rejected(rng):
    gt = _band_limited(rng, 64, 0.25)
    with pytest.raises(ValueError, match="exceeds max_shift"):
        q.register_subpixel(np.roll(gt, 5, axis=1), gt)
    _, shift = q.register_subpixel(np.roll(gt, 5, axis=1), gt, max_shift=6.0)
    np.testing.assert_allclose(shift, [0.0, -5.0], atol=0.05)


# ----------------------------------------------------------------------------------------------
# PSNR / SSIM
# ----------------------------------------------------------------------------------------------


def test_identical_images_give_infinite_psnr_and_unit_ssim(rng):
    gt = _scene(rng)
    psnr, ssim = q.psnr_ssim(gt, gt)
    assert psnr.shape == () and math.isinf(float(psnr)) and float(ssim) == pytest.approx(1.0)
    # an affine copy (no absolute scale) is perfect up to round-off, as is a shifted one
    psnr_a, ssim_a = q.psnr_ssim(3.0 * gt - 7.0, gt)
    assert psnr_a > 200 and ssim_a == pytest.approx(1.0, abs=1e-9)
    shifted = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(gt), (0.5, 1.25))).real
    psnr_s, ssim_s = q.psnr_ssim(shifted, gt)
    assert psnr_s > 40 and ssim_s > 0.99


def test_psnr_matches_its_definition_and_orders_degradations(rng):
    gt = np.stack([_scene(rng), _scene(rng)])
    noise = rng.standard_normal(gt.shape)
    sigma = 0.05
    pred = gt + sigma * noise
    psnr, ssim = q.psnr_ssim(pred, gt, register=False, border=0)
    # least squares leaves the residual variance var(gt)·(1 − r²), r = Pearson(pred, gt): exact
    r = np.array([np.corrcoef(p.ravel(), g.ravel())[0, 1] for p, g in zip(pred, gt, strict=True)])
    rmse = np.sqrt(gt.var(axis=(1, 2)) * (1 - r**2))
    expected = 20 * np.log10((gt.max(axis=(1, 2)) - gt.min(axis=(1, 2))) / rmse)
    np.testing.assert_allclose(psnr, expected, rtol=1e-9)
    # the fit can only lower the RMSE below the plain one (σ), so PSNR ≥ 20 log10(R/σ) − 0.1 dB
    assert np.all(psnr > 20 * np.log10((gt.max(axis=(1, 2)) - gt.min(axis=(1, 2))) / sigma) - 0.1)
    assert psnr.shape == ssim.shape == (2,)
    psnr_wf, ssim_wf = q.psnr_ssim(_low_pass(gt[0], 0.15), gt[0])
    psnr_lo, ssim_lo = q.psnr_ssim(gt[0] + 0.01 * noise[0], gt[0])
    assert psnr_lo > psnr_wf and ssim_lo > ssim_wf


# ----------------------------------------------------------------------------------------------
# Spectral correlation
# ----------------------------------------------------------------------------------------------


def test_spectral_correlation_of_identical_images_is_one(rng):
    gt = _scene(rng)
    c = q.spectral_correlation(2.0 * gt + 1.0, gt, k_wf=0.2, k_pattern=0.15)
    assert float(c.beyond) == pytest.approx(1.0, abs=1e-9)
    assert float(c.widefield) == pytest.approx(1.0, abs=1e-9)


def test_spectral_correlation_of_independent_noise_is_zero():
    rng = np.random.default_rng(3)
    n, k_wf, k_pattern = 128, 0.2, 0.15
    a, b = rng.standard_normal((2, 8, n, n))
    c = q.spectral_correlation(a, b, k_wf, k_pattern, register=False)
    assert c.beyond.shape == (8,)
    # ring 0.22 < |f| < 0.315: n = π(0.315² − 0.22²)·128² ≈ 2600 samples
    assert 2400 < c.n_beyond < 2800
    assert np.all(np.abs(c.beyond) < _noise_tol(c.n_beyond))
    assert np.all(np.abs(c.widefield) < _noise_tol(c.n_widefield))
    # the mean of 8 independent values: the tolerance shrinks by √8
    assert abs(c.beyond.mean()) < _noise_tol(c.n_beyond) / math.sqrt(8)


def test_blurred_gt_has_no_correlation_beyond_the_cutoff(rng):
    n, k_wf, k_pattern = 128, 0.2, 0.15
    gt = _scene(rng, n)
    wf = _low_pass(gt, k_wf)
    c = q.spectral_correlation(wf, gt, k_wf, k_pattern)
    # the widefield band is reproduced (the cone OTF only reweights it) ...
    assert float(c.widefield) > 0.8
    # ... and the ring starting 2.6 Fourier bins past the cut-off holds only Hann leakage of an OTF
    # that is already ~0 at the cut-off: within the independent-noise tolerance of 0
    assert abs(float(c.beyond)) < _noise_tol(c.n_beyond)
    # a partial SIM-like gain (the OTF support extended to k_wf + |k|) is seen
    sim_like = _low_pass(gt, k_wf + k_pattern)
    assert float(q.spectral_correlation(sim_like, gt, k_wf, k_pattern).beyond) > 0.5


def test_pattern_wave_vectors_use_the_smallest_norm():
    k = np.array([[0.0, 0.1], [0.12, 0.0], [0.3, 0.4]])
    assert q.pattern_norm(k) == pytest.approx(0.1)
    assert q.pattern_norm(np.array([0.06, 0.08])) == pytest.approx(0.1)
    assert q.pattern_norm(-0.1) == pytest.approx(0.1)


# ----------------------------------------------------------------------------------------------
# FRC
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("f_max", [0.1, 0.2, 0.3])
def test_frc_of_band_limited_pair_finds_the_cutoff(f_max):
    """Two independent noisy copies (SNR ≈ 350 per Fourier sample inside the band) of one image
    band-limited at ``f_max``: FRC ≈ 1 inside, ≈ 0 outside, so the 1/7 crossing is at ``f_max``,
    moved outwards by at most 2.5 rings (Hann leakage ≤ 2 rings, ring half-width 0.5) plus up to
    2 rings where noise alone stays above 1/7 (σ ≈ 0.15 per ring at 256²): ``[f_max, f_max + 4.5/N]``.
    Measured over 20 seeds: +1.5 … +2.1 rings at 0.2 and 0.3, +1.9 … +3.2 at 0.1."""
    n, pixel_nm = 256, 30.0
    rng = np.random.default_rng(11)
    base = _band_limited(rng, n, f_max)
    a, b = base + 0.3 * base.std() * rng.standard_normal((2, n, n))
    res = rl.frc_resolution(a, b, pixel_nm)
    f_c = pixel_nm / res.resolution_nm
    assert res.crossed
    assert f_max <= f_c <= f_max + 4.5 / n
    inside = res.frequency < f_max - 2.0 / n
    assert np.all(res.curve[1:][inside[1:]] > 0.9)
    assert res.frequency[-1] == pytest.approx(0.5) and rl.FRC_THRESHOLD == pytest.approx(1 / 7)


def test_frc_of_independent_noise_resolves_nothing():
    """Pure noise pairs cross at once: ring i (≈ 6i samples) is above 1/7 by chance with p ≈ 0.4,
    so a crossing after ring 8 (resolution finer than N/8 px) has probability < 1e-3."""
    rng = np.random.default_rng(5)
    n = 128
    a, b = rng.standard_normal((2, n, n))
    res = rl.frc_resolution(a, b, 1.0)
    assert res.crossed and res.resolution_nm > n / 8


def test_frc_never_crossing_reports_nyquist(rng):
    img = rng.standard_normal((64, 64))
    res = rl.frc_resolution(img, img, 40.0)
    assert not res.crossed and res.resolution_nm == pytest.approx(80.0)
    np.testing.assert_allclose(res.curve[1:], 1.0)


def test_frc_search_stops_at_the_band_edge():
    """A pair with little noise, and only inside |f| < 0.2 (e.g. an image up-sampled 2.5×): beyond
    the band both images hold the same shared signal, so FRC stays ≈ 1 up to Nyquist and the full
    search reports Nyquist; searching to the band edge reports the edge as the bound."""
    n, pixel_nm = 128, 10.0
    rng = np.random.default_rng(3)
    base = rng.standard_normal((n, n))
    noise = [_band_limited(rng, n, 0.2) for _ in range(2)]
    a, b = base + 0.1 * noise[0], base + 0.1 * noise[1]
    full = rl.frc_resolution(a, b, pixel_nm)
    assert not full.crossed and full.resolution_nm == pytest.approx(2 * pixel_nm)
    edge = rl.frc_resolution(a, b, pixel_nm, max_freq=0.2)
    assert not edge.crossed and edge.resolution_nm == pytest.approx(pixel_nm / 0.2)


# ----------------------------------------------------------------------------------------------
# Decorrelation analysis
# ----------------------------------------------------------------------------------------------


def _blurred_points(rng: np.random.Generator, sigma: float, n: int = 128) -> np.ndarray:
    points = np.zeros((n, n))
    points[rng.integers(0, n, 150), rng.integers(0, n, 150)] = 1.0
    img = ndimage.gaussian_filter(points, sigma)
    return img + 0.01 * img.max() * rng.standard_normal((n, n))


def test_decorrelation_orders_and_scales_with_blur_width():
    """Points blurred by a Gaussian σ with 1% noise: the spectrum exp(−2π²σ²f²) meets the noise
    floor at ``f ∝ 1/σ``, so the resolution scales with σ. Measured (px) over seeds 0–2 for
    σ = 1, 2, 4: 2.3–2.4, 4.6–4.7, 9.5–9.8. Doubling σ must give a ratio in [1.6, 2.4]."""
    pixel_nm = 20.0
    for seed in range(2):
        res = [rl.decorrelation_resolution(_blurred_points(np.random.default_rng(seed), s), pixel_nm)
               for s in (1.0, 2.0, 4.0)]
        nm = np.array([r.resolution_nm for r in res])
        assert np.all(np.isfinite(nm)) and np.all(np.diff(nm) > 0)
        assert np.all((nm[1:] / nm[:-1] > 1.6) & (nm[1:] / nm[:-1] < 2.4))
        assert nm[0] >= 2 * pixel_nm
        assert all(r.amplitude > 0.5 for r in res)


def test_decorrelation_of_pure_noise_is_not_finer_than_nyquist():
    """White noise has a flat spectrum, so every curve rises to the Nyquist end without a peak:
    no resolution (NaN), and never one finer than 2 px."""
    for seed in range(3):
        img = np.random.default_rng(seed).standard_normal((128, 128))
        r = rl.decorrelation_resolution(img, 10.0)
        assert math.isnan(r.resolution_nm) and r.amplitude == 0.0
    assert math.isnan(rl.decorrelation_resolution(np.ones((32, 32)), 10.0).resolution_nm)


# ----------------------------------------------------------------------------------------------
# Tables and figure
# ----------------------------------------------------------------------------------------------


def test_quality_table_and_markdown(rng, tmp_path):
    n_img, n, k_wf, k_pattern, pixel_nm = 2, 96, 0.2, 0.15, 30.0
    # blur 1 px and 2% noise: the FRC of "good" crosses 1/7 before Nyquist (measured 67–74 nm)
    gt = np.stack([_scene(rng, n, blur=1.0) for _ in range(n_img)])
    wf = np.stack([_low_pass(g, k_wf) for g in gt])
    good, good2 = gt + 0.02 * gt.max() * rng.standard_normal((2, *gt.shape))
    table = qs.quality_table({"widefield": wf, "good": good, "perfect": gt}, gt, k_wf=k_wf,
                            k_pattern=k_pattern, pixel_nm=pixel_nm, second={"good": good2})
    assert list(table) == ["widefield", "good", "perfect"]
    wf_row, good_row, perfect_row = table["widefield"], table["good"], table["perfect"]
    assert perfect_row["psnr"] is None  # PSNR ∞ has no JSON number
    assert perfect_row["ssim"] == pytest.approx(1.0) and perfect_row["spectral_corr"] == pytest.approx(1.0)
    assert good_row["psnr"] > wf_row["psnr"] and good_row["ssim"] > wf_row["ssim"]
    assert good_row["spectral_corr"] > 0.9 and abs(wf_row["spectral_corr"]) < 0.1
    assert wf_row["spectral_corr_wf"] > 0.8
    assert wf_row["decorr_nm"] > good_row["decorr_nm"] >= 2 * pixel_nm
    # widefield cannot resolve past its cut-off 1/k_wf = 150 nm (measured 163–169 nm)
    assert wf_row["decorr_nm"] > 0.9 * pixel_nm / k_wf
    assert good_row["frc_nm"] is not None and good_row["frc_nm"] >= 2 * pixel_nm
    assert wf_row["decorr_valid"] == n_img
    assert "frc_nm" in good_row and "frc_nm" not in wf_row and good_row["frc_valid"] == n_img
    # the per-sample mean equals the functions' own values
    psnr, _ = q.psnr_ssim(good, gt)
    assert good_row["psnr"] == pytest.approx(float(psnr.mean()))
    json.dumps(table, allow_nan=False)

    md = qs.quality_markdown(table)
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 3 and lines[0].startswith("| method | PSNR (dB) | SSIM")
    assert "FRC res. (nm)" in lines[0]
    assert lines[4].startswith("| perfect | – | 1.000 | 1.000")
    assert lines[2].split("|")[-2].strip() == "–"  # widefield has no FRC


def test_plot_quality_panel_writes_png(rng, tmp_path):
    from matplotlib.image import imread

    from simuq_core.reports.comparison import plot_quality_panel

    gt = _scene(rng, 64)
    out = plot_quality_panel(tmp_path / "panel.png", {"widefield": _low_pass(gt, 0.2), "SIM": gt},
                             gt, 30.0, k_wf=0.2, k_pattern=np.array([[0.0, 0.15]]))
    img = imread(out)
    assert out.exists() and img.ndim == 3 and img.shape[1] > img.shape[0] / 2
    assert img[..., :3].std() > 0.05  # something was drawn


# ----------------------------------------------------------------------------------------------
# Two noise realisations of one simulated sample (the FRC input)
# ----------------------------------------------------------------------------------------------


def test_second_noise_realisation_of_a_simulated_sample():
    """The simulator keeps the noise-free expectation (``clean``) and the noise mask, so a second,
    independent realisation is ``add_noise`` on ``(clean − offset)/gain`` with a fresh generator.
    Residuals of the two must be uncorrelated (|r| < 4/√n for n pixels) and both must have the
    stored σ; the FRC of their widefield images cannot beat the OTF cut-off 2NA/λ (by more than
    the 2.5-ring Hann leakage; measured 191 nm against 1/k_wf = 188 nm)."""
    cfg = SimulateParams(n_samples=1, n_val=1, n_test=1, lr_h=64, lr_w=64, hr_factor=2)
    s = sim.simulate_sample(sim.sample_rng(0, "test", 0), cfg)
    expected_e = (s.clean.astype(np.float64) - cfg.noise.offset_adu) / cfg.noise.gain_adu_per_e
    raw2 = sim.add_noise(np.random.default_rng([0, 2, 0, 1]), expected_e,
                         s.noise_mask.astype(np.float64), cfg.noise)
    z1, z2 = (s.raw - s.clean) / s.sigma, (raw2 - s.clean) / s.sigma
    assert abs(np.corrcoef(z1.ravel(), z2.ravel())[0, 1]) < 4 / math.sqrt(z1.size)
    assert z2.std() == pytest.approx(1.0, abs=4 / math.sqrt(2 * z2.size))
    x1, x2 = ((r - s.norm_offset) / s.norm_scale for r in (s.raw, raw2))
    wf1, wf2 = widefield(np.stack([x1, x2]), 1)
    pixel = cfg.psf.lr_pixel_nm
    res = rl.frc_resolution(wf1, wf2, pixel)
    k_wf = otf_cutoff_cycles_per_px(s.na, cfg.psf.wavelength_nm, pixel)
    assert res.crossed and pixel / res.resolution_nm < k_wf + 2.5 / 64
    # decorrelation of the widefield: not finer than the cut-off (measured 204 nm vs 188 nm), and
    # on the ×3 bilinear grid, analysed within the camera's Nyquist band (max_freq = 0.5/3), the
    # same within 10% (measured 211.5 nm; the 50-radius grid quantises k_c by 2%, ×2 refined)
    lr = rl.decorrelation_resolution(wf1, pixel).resolution_nm
    assert lr > 0.9 / k_wf * pixel
    wf_hr = widefield(x1[None], 3)[0]
    hr = rl.decorrelation_resolution(wf_hr, pixel / 3, max_freq=0.5 / 3).resolution_nm
    assert hr == pytest.approx(lr, rel=0.1)
