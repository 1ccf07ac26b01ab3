"""The jittable Wiener SIM the network reads (simuq_core/baselines/wiener_jax.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from simuq_core.baselines import WienerOptions, equal_step_phases, ideal_otf, wiener_sim
from simuq_core.baselines.wiener_jax import fourier_upsample, wiener_sim_jax
from simuq_core.config import SimulateParams
from simuq_core.evaluation.synthetic import affine_fit_psnr, pool_gt
from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.pattern.estimate import PatternEstimate, estimate_pattern
from simuq_core.simulation.samples import sample_rng, simulate_sample


@pytest.fixture(scope="module")
def stacks():
    cfg = SimulateParams(n_samples=1, n_val=1, n_test=3, lr_h=48, lr_w=48, hr_factor=2)
    samples = [simulate_sample(sample_rng(0, "test", i), cfg) for i in range(3)]
    x = np.stack([(s.raw - s.norm_offset) / s.norm_scale for s in samples]).astype(np.float32)
    gt = pool_gt(np.stack([s.emitter for s in samples]), 1)
    cutoff = otf_cutoff_cycles_per_px(cfg.psf.na, cfg.psf.wavelength_nm, cfg.psf.lr_pixel_nm)
    est = estimate_pattern(jnp.asarray(x), 3, cutoff, (1 / 6.5, 1 / 3.5))
    return x, gt, est, cutoff


def test_fourier_upsample_interpolates_a_band_limited_signal_exactly():
    """A cosine below Nyquist sampled at LR centres i + 0.5 is reproduced at the r× grid's
    centres (j + 0.5)/r to float32 precision (periodic on the grid: whole cycles)."""
    h, r = 16, 3
    f = 3 / h
    lr = np.cos(2 * np.pi * f * (np.arange(h) + 0.5))
    hr = np.cos(2 * np.pi * f * (np.arange(r * h) + 0.5) / r)
    up = np.asarray(fourier_upsample(jnp.asarray(np.outer(lr, np.ones(h))), r))
    np.testing.assert_allclose(up.real, np.outer(hr, np.ones(r * h)), atol=1e-5)
    assert np.abs(up.imag).max() < 1e-5


def test_matches_the_numpy_baseline(stacks):
    """Same filter as :func:`wiener_sim` (cos-bell, no fade): images correlate > 0.999 away from
    the borders (where the two shift the bands differently) and score the same PSNR (± 0.1 dB)."""
    x, gt, est, cutoff = stacks
    w = 0.02
    jax_img = np.asarray(wiener_sim_jax(jnp.asarray(x), est, 0.8, cutoff, 2, w))
    options = WienerOptions(wiener_w=w, apodization="cosbell", edge_taper=0.0)
    ref = wiener_sim(x, np.asarray(est.k, np.float64), equal_step_phases(np.asarray(est.phase), 3),
                     np.full((len(x), 3), 0.8), ideal_otf(1.3, 488.0, 62.6), 2, options)
    inner = (slice(None), slice(12, -12), slice(12, -12))
    for a, b in zip(jax_img[inner], ref[inner], strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
    assert affine_fit_psnr(jax_img, gt)[0] == pytest.approx(affine_fit_psnr(ref, gt)[0], abs=0.1)


def test_a_tile_with_the_image_pattern_reproduces_the_image(stacks):
    """A 32² crop given the image's pattern (reference point moved to the crop) gives the
    image's Wiener SIM in the crop's interior: the network's tiles read one reconstruction."""
    x, _, est, cutoff = stacks
    full = np.asarray(wiener_sim_jax(jnp.asarray(x[:1]), PatternEstimate(*(a[:1] for a in est)),
                                     0.8, cutoff, 2, 0.05))
    y0, x0, t = 8, 12, 32
    crop = x[:1, :, y0:y0 + t, x0:x0 + t]
    h, w = x.shape[-2:]
    # image centre relative to the crop centre, in LR pixels
    origin = jnp.asarray([[h / 2 - (y0 + t / 2), w / 2 - (x0 + t / 2)]], jnp.float32)
    tile_est = PatternEstimate(est.k[:1], est.phase[:1], est.contrast[:1], origin)
    tile = np.asarray(wiener_sim_jax(jnp.asarray(crop), tile_est, 0.8, cutoff, 2, 0.05))
    ref = full[0, 2 * y0:2 * (y0 + t), 2 * x0:2 * (x0 + t)]
    inner = (slice(16, -16), slice(16, -16))
    assert np.corrcoef(tile[0][inner].ravel(), ref[inner].ravel())[0, 1] > 0.98
    # a wrong reference point (the crop's own centre) scrambles the band phases
    bad = np.asarray(wiener_sim_jax(jnp.asarray(crop), PatternEstimate(
        est.k[:1], est.phase[:1], est.contrast[:1], jnp.zeros((1, 2))), 0.8, cutoff, 2, 0.05))
    assert (np.corrcoef(bad[0][inner].ravel(), ref[inner].ravel())[0, 1]
            < np.corrcoef(tile[0][inner].ravel(), ref[inner].ravel())[0, 1] - 0.02)
