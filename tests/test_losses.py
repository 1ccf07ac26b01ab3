"""Likelihoods and reconstruction losses (docs/design.md §1, §4.5)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from simuq_core.training import losses
from tests._tolerance import assert_f32_close, f32_tol

N_DRAWS = 100_000


def _f32(x) -> jnp.ndarray:
    return jnp.asarray(x, jnp.float32)


def _heteroscedastic(seed: int, n: int = N_DRAWS):
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-1.0, 1.0, n)
    var = np.exp(rng.uniform(-6.0, 1.0, n))
    x = mean + np.sqrt(var) * rng.standard_normal(n)
    return _f32(x), _f32(mean), _f32(var)


# ----------------------------------------------------------------------------------------------
# Gaussian NLL
# ----------------------------------------------------------------------------------------------


def test_nll_of_true_mean_and_variance_has_its_analytic_expectation():
    # E[0.5·(z² + log v)] = 0.5·(1 + log v). Each pixel's 0.5·z² has variance 0.5, so the mean over
    # N pixels has SE sqrt(0.5/N) = 0.0022 at N = 1e5; we allow 5 SE.
    x, mean, var = _heteroscedastic(0)
    tol = 5 * math.sqrt(0.5 / N_DRAWS)
    expected = 0.5 * (1.0 + float(jnp.log(var).mean()))
    assert float(losses.gaussian_nll(x, mean, var)) == pytest.approx(expected, abs=tol)
    with_const = float(losses.gaussian_nll(x, mean, var, include_const=True))
    assert with_const == pytest.approx(expected + 0.5 * math.log(2 * math.pi), abs=tol)
    # A variance scaled by k costs 0.5·(1/k − 1 + log k) more on average (> 0: the truth wins).
    for k in (0.5, 2.0):
        excess = float(losses.gaussian_nll(x, mean, k * var) - losses.gaussian_nll(x, mean, var))
        assert excess == pytest.approx(0.5 * (1 / k - 1 + math.log(k)), abs=tol)


def test_beta_zero_is_the_plain_nll():
    x, mean, var = _heteroscedastic(1, 1000)
    terms = 0.5 * ((x - mean) ** 2 / var + jnp.log(var))
    plain = terms.mean()
    # float32 means of the same terms in other orders (tests/_tolerance.py)
    assert_f32_close(losses.gaussian_nll(x, mean, var, beta=0.0), plain, x.size, scale=terms)
    assert_f32_close(losses.gaussian_nll_map(x, mean, var).mean(), plain, x.size, scale=terms)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_beta_nll_gradients_are_scaled_by_var_to_the_beta(beta):
    x, mean, var = _heteroscedastic(2, 500)
    n = x.size
    g_mean, g_var = jax.grad(losses.gaussian_nll, argnums=(1, 2))(x, mean, var, beta=beta)
    resid = x - mean
    np.testing.assert_allclose(g_mean, -(var**beta) * resid / var / n, rtol=1e-4)
    np.testing.assert_allclose(
        g_var, var**beta * 0.5 * (1 / var - resid**2 / var**2) / n, rtol=1e-4, atol=1e-9
    )
    if beta == 1.0:  # β = 1: the mean's gradient is the MSE gradient
        np.testing.assert_allclose(g_mean, -resid / n, rtol=1e-4)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_detach_mean_semantics(beta):
    # ℓ = sg(v)^β·NLL(x; sg(μ), v) + 0.5·(x − μ)²: ∂/∂μ = −(x − μ) whatever v and β, ∂/∂v unchanged.
    x, mean, var = _heteroscedastic(3, 500)
    n = x.size
    kw = dict(beta=beta)
    g_mean, g_var = jax.grad(losses.gaussian_nll, argnums=(1, 2))(
        x, mean, var, detach_mean=True, **kw
    )
    np.testing.assert_allclose(g_mean, -(x - mean) / n, rtol=1e-5)
    g_mean_big_v = jax.grad(losses.gaussian_nll, argnums=1)(
        x, mean, 100.0 * var, detach_mean=True, **kw
    )
    np.testing.assert_allclose(g_mean_big_v, g_mean, rtol=1e-6)
    g_var_attached = jax.grad(losses.gaussian_nll, argnums=2)(x, mean, var, **kw)
    np.testing.assert_allclose(g_var, g_var_attached, rtol=1e-6)
    # Without detaching the mean's gradient does depend on v.
    g_mean_attached = jax.grad(losses.gaussian_nll, argnums=1)(x, mean, var, **kw)
    assert float(jnp.abs(g_mean_attached - g_mean).max()) > 1e-3
    value = losses.gaussian_nll(x, mean, var, detach_mean=True, **kw)
    expected = losses.gaussian_nll(x, mean, var, **kw) + 0.5 * ((x - mean) ** 2).mean()
    # two float32 means of n terms against one
    terms = var**beta * losses.gaussian_nll_map(x, mean, var) + 0.5 * (x - mean) ** 2
    assert_f32_close(value, expected, x.size, depth=2, scale=terms)


def test_nll_weights_and_mask():
    x, mean, var = _heteroscedastic(4, 200)
    per_pixel = losses.gaussian_nll_map(x, mean, var)
    mask = jnp.arange(200) % 3 != 0
    masked = losses.gaussian_nll(x, mean, var, mask=mask)
    # float32 (weighted) means of the same terms in other orders (tests/_tolerance.py)
    assert_f32_close(masked, per_pixel[mask].mean(), x.size, scale=per_pixel)
    # Masked-out pixels do not matter, even absurd ones.
    x_bad = jnp.where(mask, x, 1e6)
    np.testing.assert_allclose(losses.gaussian_nll(x_bad, mean, var, mask=mask), masked, rtol=1e-6)
    w = jnp.linspace(0.0, 2.0, 200, dtype=jnp.float32)
    assert_f32_close(losses.gaussian_nll(x, mean, var, weights=w), (w * per_pixel).sum() / w.sum(),
                     x.size, depth=2, scale=per_pixel)
    both = losses.gaussian_nll(x, mean, var, weights=w, mask=mask)
    assert_f32_close(both, (w * mask * per_pixel).sum() / (w * mask).sum(), x.size, depth=2,
                     scale=per_pixel)
    empty = losses.gaussian_nll(x, mean, var, mask=jnp.zeros(200, bool))
    assert float(empty) == 0.0


# ----------------------------------------------------------------------------------------------
# L1, SSIM, MS-SSIM
# ----------------------------------------------------------------------------------------------


def _images(seed: int, shape=(2, 3, 48, 44), noise: float = 0.1):
    """Smooth structured images in [0, 1] and a noisy copy."""
    rng = np.random.default_rng(seed)
    clean = ndimage.gaussian_filter(rng.uniform(0, 1, shape), sigma=(0, 0, 2, 2))
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    noisy = clean + noise * rng.standard_normal(shape)
    return clean, noisy


def test_l1_loss():
    a, b = _images(5)
    assert_f32_close(losses.l1_loss(_f32(a), _f32(b)), np.abs(a - b).mean(), a.size,
                     scale=np.abs(a - b))  # a float32 mean against float64


@pytest.mark.parametrize("data_range", [1.0, 2.5])
@pytest.mark.parametrize("noise", [0.02, 0.3])
def test_ssim_matches_skimage(data_range, noise):
    a, b = _images(6, noise=noise)
    a, b = data_range * a, data_range * b
    reference = np.mean([
        structural_similarity(a[i, c], b[i, c], gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=data_range)
        for i in range(a.shape[0]) for c in range(a.shape[1])
    ])
    ours = float(losses.ssim(_f32(a), _f32(b), data_range))
    assert ours == pytest.approx(reference, abs=1e-4)
    assert losses.ssim_map(_f32(a), _f32(b), data_range).shape == (2, 3, 38, 34)


def _ms_ssim_reference(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Naive NumPy MS-SSIM: scipy Gaussian filter (σ 1.5, radius 5), crop 5, 2×2 mean pooling."""
    m = losses.ms_ssim_num_scales(*a.shape[-2:])
    w = np.asarray(losses.MS_SSIM_WEIGHTS[:m])
    w = w / w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = []
    for img_a, img_b in zip(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]),
                            strict=True):
        total = 1.0
        for j in range(m):
            def filt(z):
                return ndimage.gaussian_filter(z, 1.5, truncate=3.5)[5:-5, 5:-5]

            mu_a, mu_b = filt(img_a), filt(img_b)
            va, vb = filt(img_a**2) - mu_a**2, filt(img_b**2) - mu_b**2
            cov = filt(img_a * img_b) - mu_a * mu_b
            cs = (2 * cov + c2) / (va + vb + c2)
            lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
            value = (lum * cs).mean() if j == m - 1 else cs.mean()
            total *= max(value, 1e-6) ** w[j]
            h, wd = (img_a.shape[0] // 2) * 2, (img_a.shape[1] // 2) * 2
            img_a = img_a[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
            img_b = img_b[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
        out.append(total)
    return float(np.mean(out))


def test_ms_ssim_matches_a_naive_reference():
    a, b = _images(7, shape=(2, 2, 50, 47), noise=0.15)
    assert losses.ms_ssim_num_scales(50, 47) == 3
    reference = _ms_ssim_reference(a, b, 1.0)
    assert float(losses.ms_ssim(_f32(a), _f32(b), 1.0)) == pytest.approx(reference, abs=1e-4)


def test_ms_ssim_is_one_for_identical_images_and_decreases_with_noise():
    clean, _ = _images(8, shape=(2, 9, 32, 32))
    assert float(losses.ms_ssim(_f32(clean), _f32(clean))) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(9)
    values = [
        float(losses.ms_ssim(_f32(clean), _f32(clean + s * rng.standard_normal(clean.shape))))
        for s in (0.01, 0.05, 0.2)
    ]
    assert 1.0 > values[0] > values[1] > values[2]


@pytest.mark.parametrize(
    "side,scales", [(11, 1), (21, 1), (22, 2), (32, 2), (44, 3), (80, 3), (88, 4), (176, 5),
                    (500, 5)]
)
def test_ms_ssim_scale_rule(side, scales):
    # M = the largest M ≤ 5 with min(H, W) // 2^(M−1) ≥ 11.
    assert losses.ms_ssim_num_scales(side, side + 7) == scales


def test_ms_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="window"):
        losses.ms_ssim(jnp.ones((1, 1, 10, 40)), jnp.ones((1, 1, 10, 40)))


def test_ms_ssim_gradient_is_finite_for_anticorrelated_images():
    # cs < 0 at every scale: clamped, so the fractional power neither NaNs nor blows up.
    a, _ = _images(10, shape=(1, 1, 40, 40))
    a = _f32(a)
    value, grad = jax.value_and_grad(lambda z: losses.ms_ssim(z, 1.0 - a))(a)
    assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))
    assert float(value) < 0.1


def test_aux_rec_loss_modes_and_jit():
    a, b = _images(11, shape=(2, 9, 32, 32))
    a, b = _f32(a), _f32(b)
    l1 = float(losses.l1_loss(a, b))
    ms = float(losses.ms_ssim(a, b))
    aux = jax.jit(losses.aux_rec_loss, static_argnames=("mode", "data_range"))
    # jit against eager (tests/_tolerance.py): a mean of |a − b|; MS-SSIM's maps (≤ 1) are 11×11
    # Gaussian filters of products, averaged over every pixel, at up to 5 scales
    l1_tol = f32_tol(jnp.abs(a - b), a.size)
    ms_tol = f32_tol(1.0, 121, 2 * 5) + f32_tol(1.0, a.size, 5)
    assert_f32_close(aux(a, b, mode="l1"), l1, atol=l1_tol)
    assert_f32_close(aux(a, b, mode="ms-ssim"), 1.0 - ms, atol=ms_tol)
    assert_f32_close(aux(a, b, mode="l1+ms-ssim"), l1 + 1.0 - ms, atol=l1_tol + ms_tol)
    assert float(aux(a, a, mode="l1+ms-ssim")) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="aux_rec_mode"):
        losses.aux_rec_loss(a, b, mode="l2")
