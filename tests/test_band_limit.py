"""The SIM-band-limited ground truth of the calibration reports."""

import numpy as np

from simuq_core.evaluation.sim_band import SimBand, sim_band_limit, sim_support


def _wave(shape, fy, fx, phase=0.3):
    # Periodic on the grid for f = n / size: the filter is exact for it.
    y, x = np.mgrid[: shape[0], : shape[1]]
    return np.cos(2 * np.pi * (fy * y + fx * x) + phase)


def test_support_is_the_otf_disc_and_its_shifted_copies():
    k = np.array([[0.0, 0.2], [0.0, 0.2], [0.17, 0.1]])
    mask = sim_support((64, 64), k, cutoff=0.15)
    f = np.fft.fftfreq(64)
    iy = {round(v, 6): i for i, v in enumerate(f)}

    def at(fy, fx):
        return bool(mask[iy[round(fy, 6)], iy[round(fx, 6)]])

    assert at(0.0, 0.0) and at(0.0, 0.140625)      # inside the OTF disc
    assert at(0.0, 0.328125) and at(0.0, -0.328125)  # 0.2 + 0.128: only in the shifted copies
    assert not at(0.0, 0.375) and not at(0.25, -0.203125)  # beyond every copy
    assert at(0.25, 0.0)                             # near the third angle's copy
    assert mask.sum() == mask[::-1, ::-1].sum()      # symmetric under f -> -f (real images)


def test_band_limit_keeps_passband_waves_and_removes_the_rest():
    shape, k, cut = (64, 64), np.array([[[0.0, 0.2]] * 3]), 0.15
    inside = _wave(shape, 0.0, 0.3125)   # in the +k copy
    outside = _wave(shape, 0.25, 0.0)    # in no copy
    out = sim_band_limit((inside + outside)[None], k, cut)[0]
    np.testing.assert_allclose(out, inside, atol=1e-9)
    np.testing.assert_allclose(sim_band_limit(outside[None], k, cut)[0], 0.0, atol=1e-9)
    # A constant and a smooth blob pass unchanged (they sit inside the OTF disc).
    y, x = np.mgrid[:64, :64]
    blob = 2.0 + np.exp(-((y - 30) ** 2 + (x - 34) ** 2) / 50.0)
    np.testing.assert_allclose(sim_band_limit(blob[None], k, cut)[0], blob, atol=2e-3)


def test_band_variance_matches_monte_carlo(rng):
    # Var(h ⊛ δ) = h² ⊛ v for independent δ; n = 4000 draws give each pixel's sample variance a
    # relative SE of sqrt(2/n) = 2.2 %; the pooled mean over 256 pixels is far tighter, and the
    # worst of 256 pixels stays within ~4 SE (9 %, max |z| of 256 normals < 4 with p > 0.99).
    band = SimBand(np.array([[[0.0, 0.2], [0.15, -0.1]]]), np.array([0.12]))
    v = np.exp(rng.normal(size=(1, 16, 16)))
    want = band.limit_variance(v)[0]
    draws = rng.normal(size=(4000, 16, 16)) * np.sqrt(v)
    got = np.stack([band.limit(d[None])[0] for d in draws]).var(axis=0)
    np.testing.assert_allclose(got.mean(), want.mean(), rtol=0.01)
    np.testing.assert_allclose(got, want, rtol=0.09)
    # The filter keeps only part of white noise's power: the band-limited variance is smaller.
    assert want.mean() < 0.8 * v.mean()
