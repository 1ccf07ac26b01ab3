"""PSFs, illumination patterns and the forward model (docs/design.md §1, §7)."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from simuq_core.optics import imaging as ph
from tests._tolerance import assert_f32_close


def _fwhm_px(psf: np.ndarray) -> float:
    """FWHM of the central row by linear interpolation of the half-maximum crossings."""
    row = psf[psf.shape[0] // 2]
    c = int(np.argmax(row))
    half = row[c] / 2
    right = c + np.argmax(row[c:] < half)
    left = c - np.argmax(row[c::-1] < half)
    xr = right - 1 + (row[right - 1] - half) / (row[right - 1] - row[right])
    xl = left + 1 - (row[left + 1] - half) / (row[left + 1] - row[left])
    return xr - xl


@pytest.mark.parametrize("pixel_nm", [62.6 / 6, 62.6 / 3, 62.6 / 2])
@pytest.mark.parametrize("na,wl", [(1.3, 488.0), (1.49, 561.0)])
def test_airy_psf_sums_to_one_and_has_the_textbook_fwhm(pixel_nm, na, wl):
    size = ph.default_psf_size(na, wl, pixel_nm)
    psf = ph.airy_psf(size, na, wl, pixel_nm)
    assert psf.shape == (size, size) and size % 2 == 1
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    assert psf.min() >= 0 and np.unravel_index(psf.argmax(), psf.shape) == (size // 2, size // 2)
    fwhm_nm = _fwhm_px(psf) * pixel_nm
    assert fwhm_nm == pytest.approx(0.51 * wl / na, rel=0.05)


def test_gaussian_psf_fwhm_and_normalisation():
    psf = ph.gaussian_psf(41, fwhm_px=8.0)
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    assert _fwhm_px(psf) == pytest.approx(8.0, rel=0.03)


def test_psf_rejects_even_size():
    with pytest.raises(ValueError, match="odd"):
        ph.airy_psf(10, 1.3, 488.0, 31.3)


@pytest.mark.parametrize("n_angles,n_phases", [(3, 3), (2, 5)])
def test_pattern_mean_over_phases_is_one(rng, n_angles, n_phases):
    params = ph.sample_pattern_params(rng, n_angles, n_phases, period_lr_px=4.3, modulation=0.9)
    lp = ph.illumination_patterns((48, 40), 3, params).reshape(n_angles, n_phases, 48, 40)
    np.testing.assert_allclose(lp.mean(axis=1), 1.0, atol=1e-12)
    assert lp.min() >= 1 - 0.9 - 1e-12 and lp.max() <= 1.9 + 1e-12


def test_pattern_fourier_peak_sits_at_configured_k(rng):
    r, lr = 2, 60
    period = 5.0
    params = ph.sample_pattern_params(rng, 3, 3, period_lr_px=period, modulation=0.8)
    lp = ph.illumination_patterns((lr * r, lr * r), r, params)
    for f in range(9):
        spec = np.abs(np.fft.fft2(lp[f] - lp[f].mean()))
        freqs = np.fft.fftfreq(lr * r) * r  # cycles per LR pixel
        iy, ix = np.unravel_index(np.argmax(spec), spec.shape)
        peak = np.array([freqs[iy], freqs[ix]])
        k = params.k[f]
        # The peak is at +k or -k (a real pattern), within one frequency bin (1/lr cycles/LR px).
        dist = min(np.linalg.norm(peak - k), np.linalg.norm(peak + k))
        assert dist <= 1.0 / lr + 1e-9, (f, peak, k)
    assert np.linalg.norm(params.k, axis=1) == pytest.approx(1 / period)
    angles = np.degrees(np.arctan2(params.k[::3, 0], params.k[::3, 1]))
    assert np.diff(angles) % 180 == pytest.approx([60.0, 60.0])


def test_fft_convolve_is_a_true_linear_convolution(rng):
    x = rng.random((2, 13, 17))
    k = rng.random((5, 3))  # asymmetric: a cross-correlation would differ
    full = np.asarray(ph.fft_convolve(jnp.asarray(x), jnp.asarray(k), "full"))
    same = np.asarray(ph.fft_convolve(jnp.asarray(x), jnp.asarray(k), "same"))
    n_fft = full.shape[-2] * full.shape[-1]  # float32 FFTs over the full grid (tests/_tolerance.py)
    for b in range(2):
        assert_f32_close(full[b], signal.convolve2d(x[b], k, mode="full"), n_fft)
        assert_f32_close(same[b], signal.convolve2d(x[b], k, mode="same"), n_fft)
    flipped = signal.correlate2d(x[0], k, mode="same")
    assert np.abs(same[0] - flipped).max() > 1e-2


@pytest.mark.parametrize("r", [1, 2, 3])
def test_lr_frames_are_block_means_of_blurred_hr_product(rng, r):
    h, w, kk = 7, 6, 9
    emitter = rng.random((2, h * r, w * r))
    lp = rng.random((2, 9, h * r, w * r)) + 0.5
    psf = rng.random((2, kk, kk)) ** 3  # asymmetric
    psf /= psf.sum(axis=(1, 2), keepdims=True)
    rec = np.asarray(ph.forward_model(jnp.asarray(emitter), jnp.asarray(lp), jnp.asarray(psf), r))
    assert rec.shape == (2, 9, h, w)
    for b in range(2):
        for f in (0, 4, 8):
            blurred = signal.convolve2d(emitter[b] * lp[b, f], psf[b], mode="same")
            expected = blurred.reshape(h, r, w, r).mean(axis=(1, 3))
            np.testing.assert_allclose(rec[b, f], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("r", [2, 3])
def test_merged_kernel_path_equals_mean_path(rng, r):
    emitter = rng.random((1, 6 * r, 5 * r))
    lp = rng.random((1, 9, 6 * r, 5 * r))
    psf = rng.random((1, 7, 7)) ** 2
    psf /= psf.sum()
    rec = ph.forward_model(jnp.asarray(emitter), jnp.asarray(lp), jnp.asarray(psf), r)
    kernel = ph.merged_psf_box_kernel(jnp.asarray(psf), r)
    assert kernel.shape == (1, 7 + r - 1, 7 + r - 1)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-5)
    pooled = ph.pooled_full_convolve(jnp.asarray(emitter[:, None] * lp), kernel[:, None], r, 7)
    # Two float32 FFT paths over the full grid; the merged kernel is itself an FFT product.
    n_fft = (emitter.shape[-2] + kernel.shape[-2] - 1) * (emitter.shape[-1] + kernel.shape[-1] - 1)
    assert_f32_close(pooled, rec, n_fft, depth=2)


def test_block_mean_rejects_indivisible_shape():
    with pytest.raises(ValueError, match="not divisible"):
        ph.block_mean(jnp.zeros((5, 6)), 2)
