"""Cross-frame residual covariance and the F-dimensional Gaussian NLL.

Monte-Carlo tolerances: with N draws of a zero-mean residual, the estimate
``Ĉ_kj = mean(r_k r_j)`` has standard error ``se_kj = sqrt(Var(r_k r_j)/N)``, which for Gaussian
``r`` is ``sqrt((Σ_kk Σ_jj + Σ_kj²)/N)``; here it is estimated from the draws themselves (the
products of Gaussian emitter, pattern and PSF errors have slightly heavier tails). With
``z = (Ĉ − Σ)/se`` over the 1 620 upper-triangle entries (36 pixels × 45 pairs), a correct rule
gives ``mean z² ≈ 1`` (entries are correlated, so allow 1.5) and ``max |z| < 5.5``
(P(|z| > 5.5) = 4e-8 per entry); every wrong rule tested gives ``mean z²`` in the hundreds.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simuq_core.optics import imaging as ph
from simuq_core.pattern.estimate import PatternEstimate
from simuq_core.pattern.maps import pattern_maps, pattern_variance
from simuq_core.training.losses import gaussian_nll
from simuq_core.uncertainty import frame_covariance as fc
from simuq_core.uncertainty import frame_likelihood as fl
from simuq_core.uncertainty import lr_convolution as lc
from simuq_core.uncertainty import parametric_covariance as pc
from simuq_core.uncertainty import propagation as uq
from tests._tolerance import assert_f32_close

A, P, F = 3, 3, 9
N_MC = 12_000


def _f32(x) -> jnp.ndarray:
    return jnp.asarray(x, jnp.float32)


def _pattern(batch: int, lr: int, r: int, modulation: float, seed: int):
    """Parametric SIM pattern (period 5 LR px, angles 60° apart) and its estimate object."""
    rng = np.random.default_rng(seed)
    ang = 0.3 + np.arange(A) * np.pi / A
    k = np.broadcast_to(np.stack([np.sin(ang), np.cos(ang)], -1) / 5.0, (batch, A, 2))
    est = PatternEstimate(_f32(k), _f32(rng.uniform(0, 2 * np.pi, (batch, A))),
                          jnp.ones((batch, A)), jnp.zeros((batch, 2)))
    m = _f32(np.full((batch, A), modulation))
    return est, m, pattern_maps(est, m, P, (lr, lr), r)


# ----------------------------------------------------------------------------------------------
# Exact identities
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared_psf", [False, True])
def test_diagonal_equals_propagate_rec_variance(shared_psf):
    rng = np.random.default_rng(0)
    b, r, lr = 2, 2, 8
    hr = lr * r
    psf = _f32(ph.airy_psf(27, 1.3, 488.0, 31.3))
    psf = psf if shared_psf else jnp.stack([psf, jnp.roll(psf, 1, axis=0)])
    e = _f32(rng.uniform(0.5, 1.5, (b, hr, hr)))
    lp = _f32(rng.uniform(0.5, 1.5, (b, F, hr, hr)))
    var_e = _f32(rng.uniform(0.005, 0.05, (b, hr, hr)))
    var_l = _f32(rng.uniform(0.005, 0.05, (b, F, hr, hr)))
    var_p = (0.2 * psf) ** 2
    noise = uq.init_obs_noise_params(0.01, 1e-4)
    obs_map = _f32(rng.uniform(0.0, 1e-3, (b, 1, lr, lr)))
    prop = uq.propagate_rec_variance(
        e, lp, psf, r, var_emitter=var_e, var_light_pattern=var_l, var_psf=var_p,
        psf_var_weight=0.7, obs_noise="poisson_gaussian_map", obs_noise_params=noise,
        obs_var_map=obs_map, var_floor=1e-6)
    cov = jax.jit(fc.residual_covariance, static_argnames="r")(
        e, lp, psf, r=r, var_emitter=var_e, var_light_pattern=var_l, var_psf=var_p,
        psf_var_weight=0.7, var_obs=prop.var_obs, var_floor=1e-6)
    assert cov.shape == (b, lr, lr, F, F)
    # Two float32 implementations: variance products, then FFT convolutions over the full grid.
    n_fft = (hr + psf.shape[-1] + r - 2) ** 2
    assert_f32_close(fc.covariance_diagonal(cov), prop.var_rec, n_fft, depth=2)
    np.testing.assert_array_equal(cov, jnp.swapaxes(cov, -1, -2))
    # Positive definite, and the emitter and PSF terms correlate the frames (measured 0.05-0.07
    # here, where independent LP noise and camera noise dominate the diagonal).
    assert np.linalg.eigvalsh(np.asarray(cov, np.float64)).min() > 0.0
    var = np.diagonal(np.asarray(cov), axis1=-2, axis2=-1)
    assert (np.asarray(cov)[..., 0, 1] / np.sqrt(var[..., 0] * var[..., 1])).min() > 0.03


def test_pattern_jacobian_reproduces_pattern_variance():
    b, lr, r = 2, 8, 2
    est, m, _ = _pattern(b, lr, r, 0.8, seed=3)
    est = est._replace(origin=_f32([[0.0, 0.0], [1.5, -2.0]]))
    rng = np.random.default_rng(4)
    v_phi, v_m, v_k = (_f32(rng.uniform(1e-4, 1e-2, (b, A))) for _ in range(3))
    jac, var = fc.pattern_jacobian(est, m, v_phi, v_m, v_k, P, (lr, lr), r)
    assert jac.shape == (b, A, 4, P, lr * r, lr * r) and var.shape == (b, A, 4)
    per_pixel = jnp.einsum("baqphw,baq->baphw", jac**2, var).reshape(b, F, lr * r, lr * r)
    expected = pattern_variance(est, m, v_phi, v_m, v_k, P, (lr, lr), r)
    np.testing.assert_allclose(per_pixel, expected, rtol=1e-4, atol=1e-9)
    # Phase column: ∂l/∂φ = −m sin θ, and (1 + m cos θ − 1)² + (m sin θ)² = m².
    lp = pattern_maps(est, m, P, (lr, lr), r).reshape(b, A, P, lr * r, lr * r)
    np.testing.assert_allclose((lp - 1.0) ** 2 + jac[:, :, 0] ** 2, 0.64, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Monte Carlo
# ----------------------------------------------------------------------------------------------


def _mc_case():
    r, lr = 2, 6
    hr = lr * r
    rng = np.random.default_rng(0)
    psf = _f32(ph.gaussian_psf(7, 3.0))[None]
    est, m, lp = _pattern(1, lr, r, 0.8, seed=0)
    e = _f32(rng.uniform(0.5, 1.5, (1, hr, hr)))
    var_e = _f32(np.where(np.arange(hr)[None, None, :] >= hr // 2, 0.1, 0.02)
                 * np.ones((1, hr, 1)))  # spatially varying: two levels
    jac, var_q = fc.pattern_jacobian(est, m, _f32([[0.02, 0.01, 0.03]]), _f32([[0.01, 0.02, 0.005]]),
                                     _f32([[1e-4, 2e-4, 5e-5]]), P, (lr, lr), r)
    var_p = (0.2 * psf) ** 2
    var_obs = _f32(rng.uniform(1e-3, 3e-3, (1, F, lr, lr)))
    return dict(r=r, psf=psf, lp=lp, e=e, var_e=var_e, jac=jac, var_q=var_q, var_p=var_p,
                var_obs=var_obs)


def _mc_second_moments(c, n, chunk=2000):
    """Mean of ``r rᵀ`` and of ``(r rᵀ)²`` over ``n`` draws of the residual ``(H, W, F, F)``."""
    rec0 = ph.forward_model(c["e"], c["lp"], c["psf"], c["r"])

    def one(key):
        ks = jax.random.split(key, 4)
        de = jnp.sqrt(c["var_e"]) * jax.random.normal(ks[0], c["e"].shape)
        eps = jnp.sqrt(c["var_q"]) * jax.random.normal(ks[1], c["var_q"].shape)
        dl = jnp.einsum("baqphw,baq->baphw", c["jac"], eps).reshape(c["lp"].shape)
        dp = jnp.sqrt(c["var_p"]) * jax.random.normal(ks[2], c["psf"].shape)
        x = ph.forward_model(c["e"] + de, c["lp"] + dl, c["psf"] + dp, c["r"])
        x = x + jnp.sqrt(c["var_obs"]) * jax.random.normal(ks[3], c["var_obs"].shape)
        res = (x - rec0)[0]
        return jnp.einsum("khw,jhw->hwkj", res, res)

    @jax.jit
    def block(key):
        outer = jax.vmap(one)(jax.random.split(key, chunk))
        return outer.sum(0), (outer**2).sum(0)

    s1 = s2 = 0.0
    for i in range(n // chunk):
        a, b = block(jax.random.key(i))
        s1, s2 = s1 + np.asarray(a, np.float64), s2 + np.asarray(b, np.float64)
    return s1 / n, s2 / n


def test_cross_frame_covariance_matches_monte_carlo():
    c = _mc_case()
    r, e, lp, psf = c["r"], c["e"], c["lp"], c["psf"]
    parts = {
        "emitter": fc.residual_covariance(e, lp, psf, r, var_emitter=c["var_e"]),
        "lp": fc.residual_covariance(e, lp, psf, r, lp_jacobian=c["jac"], lp_param_var=c["var_q"]),
        "psf": fc.residual_covariance(e, lp, psf, r, var_psf=c["var_p"]),
        "noise": fc.residual_covariance(e, lp, psf, r, var_obs=c["var_obs"]),
    }
    parts = {k: np.asarray(v[0], np.float64) for k, v in parts.items()}
    total = sum(parts.values())
    everything = fc.residual_covariance(e, lp, psf, r, var_emitter=c["var_e"], lp_jacobian=c["jac"],
                                        lp_param_var=c["var_q"], var_psf=c["var_p"],
                                        var_obs=c["var_obs"])
    # Products of errors (v_e·Cov l, Var p·Cov S) make the whole differ slightly from the parts.
    scale = np.diagonal(total, axis1=-2, axis2=-1).mean()
    assert np.abs(np.asarray(everything[0]) - total).max() < 0.05 * scale
    total = np.asarray(everything[0], np.float64)

    mean, mean_sq = _mc_second_moments(c, N_MC)
    se = np.sqrt((mean_sq - mean**2) / N_MC)
    rows, cols = np.triu_indices(F)

    def z2(pred):
        z = ((mean - pred) / se)[..., rows, cols]
        return float((z**2).mean()), float(np.abs(z).max())

    mean_z2, max_z = z2(total)
    assert mean_z2 < 1.5 and max_z < 5.5, (mean_z2, max_z)

    # Wrong rules fail: (a) diagonal only; (b) LP errors independent per pixel (today's diagonal
    # model of the parametric pattern); (c) G instead of G² for the emitter; (d) no PSF
    # cross-frame terms.
    eye = np.eye(F)
    assert z2(total * eye)[0] > 50
    per_pixel_lp = jnp.einsum("baqphw,baq->baphw", c["jac"] ** 2, c["var_q"]).reshape(lp.shape)
    independent_lp = fc.residual_covariance(e, lp, psf, r, var_light_pattern=per_pixel_lp)[0]
    assert z2(total - parts["lp"] + np.asarray(independent_lp))[0] > 50
    g = ph.merged_psf_box_kernel(psf, r)
    wrong_e = ph.pooled_full_convolve(c["var_e"][:, None] * lp[:, rows] * lp[:, cols], g[:, None],
                                      r, psf.shape[-1])[0]
    wrong = total.copy()
    wrong[..., rows, cols] += np.moveaxis(np.asarray(wrong_e), 0, -1) - parts["emitter"][..., rows, cols]
    assert z2(wrong)[0] > 50
    assert z2(total - parts["psf"] * (1 - eye))[0] > 50


# ----------------------------------------------------------------------------------------------
# Likelihood
# ----------------------------------------------------------------------------------------------


def _random_spd(rng, shape, rank=12, ridge=0.01):
    a = rng.standard_normal(shape + (F, rank))
    return a @ np.swapaxes(a, -1, -2) / rank + ridge * np.eye(F)


def test_nll_matches_dense_reference_and_diagonal_case():
    rng = np.random.default_rng(1)
    cov = _random_spd(rng, (2, 3, 4))
    res = rng.standard_normal((2, F, 3, 4))
    rt = np.moveaxis(res, 1, -1)
    ref = 0.5 * (np.einsum("...k,...kj,...j->...", rt, np.linalg.inv(cov), rt)
                 + np.linalg.slogdet(cov)[1])
    got = fl.frame_gaussian_nll_map(_f32(res), _f32(cov), jitter=0.0, include_const=True)
    np.testing.assert_allclose(got, ref + 0.5 * F * math.log(2 * math.pi), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(fl.frame_gaussian_nll(_f32(res), _f32(cov), jitter=0.0),
                               ref.mean() / F, rtol=2e-5)

    # Diagonal Σ: the per-frame β-NLL of simuq_core.training.losses, β = 0 exactly; β > 0 weights each
    # pixel by sg(mean_k v_k)^β (equal to the per-frame weight when the frames share v).
    var = rng.uniform(0.1, 2.0, (2, F, 3, 4))
    diag_cov = _f32(np.moveaxis(var, 1, -1)[..., None] * np.eye(F))
    np.testing.assert_allclose(fl.frame_gaussian_nll(_f32(res), diag_cov, jitter=0.0),
                               gaussian_nll(_f32(res), 0.0, _f32(var)), rtol=1e-5)
    shared = np.broadcast_to(var[:, :1], var.shape)
    shared_cov = _f32(np.moveaxis(shared, 1, -1)[..., None] * np.eye(F))
    np.testing.assert_allclose(fl.frame_gaussian_nll(_f32(res), shared_cov, beta=0.5, jitter=0.0),
                               gaussian_nll(_f32(res), 0.0, _f32(shared), beta=0.5), rtol=1e-5)


def test_nll_gradients_match_autodiff_of_lapack_and_stay_finite():
    rng = np.random.default_rng(2)
    cov = _f32(_random_spd(rng, (2, 3, 3)))
    res = _f32(rng.standard_normal((2, F, 3, 3)))

    def lapack(r, c):
        chol = jnp.linalg.cholesky(c)
        z = jax.scipy.linalg.solve_triangular(chol, jnp.moveaxis(r, 1, -1)[..., None], lower=True)
        logdet = 2.0 * jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
        return (0.5 * ((z[..., 0] ** 2).sum(-1) + logdet)).mean() / F

    ours = jax.grad(lambda r, c: fl.frame_gaussian_nll(r, c, jitter=0.0), argnums=(0, 1))(res, cov)
    ref = jax.grad(lapack, argnums=(0, 1))(res, cov)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-7)

    def sym(g):
        return 0.5 * (g + jnp.swapaxes(g, -1, -2))

    np.testing.assert_allclose(sym(ours[1]), sym(ref[1]), rtol=1e-4, atol=1e-6)

    # Near-singular float32 covariance: a rank-1 emitter-like block (all frames equal) with
    # variances spanning 1e-6..1e2 and noise 1e-7 of the total. Finite loss and gradients.
    scale = np.logspace(-3, 1, F)
    singular = _f32(np.outer(scale, scale) * (1 + 1e-7 * np.eye(F)))[None, None, None]
    g = jax.grad(lambda c: fl.frame_gaussian_nll(res[:1, :, :1, :1], c, beta=0.5))(singular)
    assert bool(jnp.isfinite(g).all())


# ----------------------------------------------------------------------------------------------
# Identification of emitter variance vs camera noise
# ----------------------------------------------------------------------------------------------


def _newton_fit(value_and_grad, theta0, steps=15, h=1e-3, tol=1e-3):
    """Newton's method with a central-difference Hessian (4 parameters); returns θ and H at the
    last iterate (stops once a step moves every log-variance by less than ``tol``)."""
    theta = np.asarray(theta0, np.float64)
    hess = None
    for _ in range(steps):
        grad = np.asarray(value_and_grad(_f32(theta))[1], np.float64)
        cols = []
        for i in range(theta.size):
            d = np.zeros_like(theta)
            d[i] = h
            cols.append((np.asarray(value_and_grad(_f32(theta + d))[1], np.float64)
                         - np.asarray(value_and_grad(_f32(theta - d))[1], np.float64)) / (2 * h))
        hess = 0.5 * (np.stack(cols) + np.stack(cols).T)
        w, v = np.linalg.eigh(hess)
        step = -(v @ ((v.T @ grad) / np.maximum(np.abs(w), 1e-9)))
        theta = theta + step * min(1.0, 1.0 / np.abs(step).max())  # at most a factor e per step
        if np.abs(step).max() < tol:
            break
    return theta, hess


def test_full_likelihood_identifies_emitter_variance_and_noise():
    # Known emitter-free residual model: δ ~ N(0, v_e) on the HR grid (two levels, left/right
    # halves) through a weak pattern (m = 0.1, a low-contrast acquisition) and an Airy PSF, plus
    # camera noise σ² (two levels, top/bottom halves of the LR grid). Fit
    # θ = log(v_e,L, v_e,R, σ²_T, σ²_B) by maximising the likelihood, the covariance being linear
    # in exp(θ): Σ(θ) = Σ_a exp(θ_a) Σ_a with the four unit-variance components.
    b, r, lr = 16, 2, 12
    hr = lr * r
    _, _, lp = _pattern(b, lr, r, 0.1, seed=1)
    psf = _f32(ph.airy_psf(27, 1.3, 488.0, 31.3))
    e = jnp.ones((b, hr, hr), jnp.float32)
    left = _f32(np.broadcast_to(np.arange(hr)[None, :] < hr // 2, (b, hr, hr)))
    top = _f32(np.broadcast_to(np.arange(lr)[:, None] < lr // 2, (b, 1, lr, lr)))
    rc = jax.jit(fc.residual_covariance, static_argnames="r")
    comps = jnp.stack([rc(e, lp, psf, r=r, var_emitter=left), rc(e, lp, psf, r=r, var_emitter=1 - left),
                       rc(e, lp, psf, r=r, var_obs=top), rc(e, lp, psf, r=r, var_obs=1 - top)], 1)
    truth = np.log([0.5, 0.1, 2e-3, 5e-3])
    v_e = np.exp(truth[0]) * left + np.exp(truth[1]) * (1 - left)
    s2 = np.exp(truth[2]) * top + np.exp(truth[3]) * (1 - top)
    k1, k2 = jax.random.split(jax.random.key(0))
    res = ph.forward_model(jnp.sqrt(v_e) * jax.random.normal(k1, e.shape), lp, psf, r)
    res = res + jnp.sqrt(s2) * jax.random.normal(k2, (b, F, lr, lr))

    def cov(theta, idx=slice(None)):
        return jnp.einsum("a,bahwij->bhwij", jnp.exp(theta), comps[idx])

    def full(theta, idx=slice(None)):
        return fl.frame_gaussian_nll_map(res[idx], cov(theta, idx)).sum()

    def diag(theta, idx=slice(None)):
        v = fc.covariance_diagonal(cov(theta, idx))
        return (0.5 * (res[idx] ** 2 / v + jnp.log(v))).sum()

    start = truth + np.array([1.0, 1.0, -1.0, -1.0])
    fits = {}
    for name, fn in (("full", full), ("diag", diag)):
        vg = jax.jit(jax.value_and_grad(fn))
        theta, hess = _newton_fit(vg, start)
        # Pixels of one image are correlated through the PSF, so the summed per-pixel NLL is a
        # composite likelihood: its standard errors are the sandwich H⁻¹ J H⁻¹, with J from the
        # per-image scores (images are independent).
        one = jax.jit(jax.grad(lambda t, i, fn=fn: fn(t, slice(i, i + 1))), static_argnums=1)
        scores = np.stack([np.asarray(one(_f32(theta), i), np.float64) for i in range(b)])
        h_inv = np.linalg.inv(hess)
        se = np.sqrt(np.diag(h_inv @ (scores.T @ scores * b / (b - 1)) @ h_inv))
        fits[name] = theta, se, np.linalg.eigvalsh(hess)

    theta, se, eig_full = fits["full"]
    # Measured (this seed): deviations [−0.02, 0.17, 0.01, −0.01], SE [0.10, 0.16, 0.02, 0.01].
    assert np.all(np.abs(theta - truth) < 4 * se), (theta - truth, se)
    assert se.max() < 0.35  # informative: v_e within ~±40 % at 1 SE
    # The per-frame NLL sees only Var(rec_k) = σ² + Σ G² l_k² v_e, nearly frame-independent for a
    # weak pattern: a ridge along "more emitter variance, less noise". Its flattest curvature is
    # far below the full likelihood's (measured 7 vs 256) and its split is much less certain
    # (measured SE of log v_e,R 0.50 vs 0.16).
    _, se_diag, eig_diag = fits["diag"]
    assert eig_diag.min() < 0.1 * eig_full.min(), (eig_diag, eig_full)
    assert se_diag[1] > 2.0 * se[1], (se_diag, se)


# ----------------------------------------------------------------------------------------------
# Fast paths against the formulas computed term by term
# ----------------------------------------------------------------------------------------------


def _reference_covariance(e, lp, psf, r, var_e=None, jac=None, var_q=None, var_p=None, weight=1.0,
                          var_obs=None, detach=False):
    """The module docstring's formulas built the first implementation's way: every ordered frame
    pair (k, j) its own HR map, each term a direct full convolution sampled on the LR grid, the
    coherent LP errors as explicit per-frame maps (zero for the other angles' frames)."""
    sg = jax.lax.stop_gradient if detach else (lambda x: x)
    e, lp, psf = sg(e), sg(lp), sg(psf)
    b, f, hh, wh = lp.shape
    k, h, w = psf.shape[-1], hh // r, wh // r

    def lr(x, kernel):  # kernel (B, K, K) or (K, K); x (B, ..., Hh', Wh')
        kernel = kernel.reshape(kernel.shape[:1] + (1,) * (x.ndim - 3) + kernel.shape[1:]) \
            if kernel.ndim == 3 else kernel
        off = r - 1 + k // 2
        return ph.fft_convolve(x, kernel, "full")[..., off : off + r * h : r, off : off + r * w : r]

    g = ph.merged_psf_box_kernel(psf, r)
    cov = jnp.zeros((b, f, f, h, w), jnp.float32)
    if jac is not None:
        a, q, p = jac.shape[1:4]
        err = jac * jnp.sqrt(var_q)[..., None, None, None]
        frames = [jnp.pad(err[:, ai], ((0, 0), (0, 0), (ai * p, f - (ai + 1) * p), (0, 0), (0, 0)))
                  for ai in range(a)]
        errors = jnp.concatenate(frames, axis=1)  # (B, A·Q, F, Hh, Wh), one unit error each
        lp_cov = jnp.einsum("bnkhw,bnjhw->bkjhw", errors, errors)
        coherent = e[:, None, None] * errors
    else:
        lp_cov, coherent = 0.0, None
    d = 0.0 if var_e is None else var_e[:, None, None] * (lp[:, :, None] * lp[:, None, :] + lp_cov)
    if var_e is not None:
        cov = cov + lr(d, g**2)
    if coherent is not None:
        blurred = lr(coherent, g)
        cov = cov + jnp.einsum("bnkhw,bnjhw->bkjhw", blurred, blurred)
    if var_p is not None:
        box_s = ph.box_mean_full(e[:, None] * lp, r)
        source = box_s[:, :, None] * box_s[:, None, :]
        if var_e is not None:
            source = source + ph.box_mean_full(d, r) / r**2
        if coherent is not None:
            box_a = ph.box_mean_full(coherent, r)
            source = source + jnp.einsum("bnkhw,bnjhw->bkjhw", box_a, box_a)
        cov = cov + weight * lr(source, var_p)
    cov = jnp.moveaxis(cov, (1, 2), (-2, -1))
    if var_obs is not None:
        cov = cov + jnp.moveaxis(var_obs, 1, -1)[..., None] * jnp.eye(F).reshape(1, 1, 1, F, F)
    return cov


def _random_case(seed, b, lr, r, psf_size, shared_psf):
    rng = np.random.default_rng(seed)
    hr = lr * r
    psf = rng.uniform(0.0, 1.0, (psf_size, psf_size) if shared_psf else (b, psf_size, psf_size))
    psf = _f32(psf / psf.sum(axis=(-2, -1), keepdims=True))
    ang = rng.uniform(0, np.pi) + np.arange(A) * np.pi / A
    k = np.stack([np.sin(ang), np.cos(ang)], -1)[None] / rng.uniform(3.0, 6.0, (b, A, 1))
    est = PatternEstimate(_f32(k), _f32(rng.uniform(0, 2 * np.pi, (b, A))), jnp.ones((b, A)),
                          _f32(rng.uniform(-2.0, 2.0, (b, 2))))
    vals = dict(
        e=_f32(rng.uniform(0.2, 1.5, (b, hr, hr))), m=_f32(rng.uniform(0.4, 0.9, (b, A))),
        var_e=_f32(rng.uniform(0.005, 0.05, (b, hr, hr))), var_p=(0.3 * psf) ** 2, psf=psf,
        var_phase=_f32(rng.uniform(1e-3, 2e-2, (b, A))), var_mod=_f32(rng.uniform(1e-3, 2e-2, (b, A))),
        var_k=_f32(rng.uniform(1e-5, 1e-4, (b, A))), var_obs=_f32(rng.uniform(1e-3, 3e-3, (b, F, lr, lr))))
    return est, vals


@pytest.mark.parametrize(("case", "detach"), [
    ((0, 2, 8, 2, 27, False), False),
    # Further geometries: ~30 s of compilation each on a cold cache.
    pytest.param((1, 1, 6, 3, 9, True), True, marks=pytest.mark.slow),
    pytest.param((2, 1, 7, 2, 13, False), False, marks=pytest.mark.slow),
])
def test_fast_paths_match_term_by_term_reference(case, detach):
    """Values and gradients of the parametric path (training) and of the generic path (dense
    Jacobian) equal the reference construction to float32 round-off. Cases: default
    geometry (r = 2, Airy-sized K = 27, per-sample PSF), r = 3 with a shared PSF, an odd LR
    size; offsets that need the decimated FFT's input shift are tested below."""
    seed, b, lr, r, psf_size, shared = case
    est, v = _random_case(seed, b, lr, r, psf_size, shared)
    weights = _f32(np.random.default_rng(seed + 10).standard_normal((b, lr, lr, F, F)))

    def reference(x):
        lp = pattern_maps(est, x["m"], P, (lr, lr), r)
        jac, var_q = fc.pattern_jacobian(est, x["m"], x["var_phase"], x["var_mod"], x["var_k"], P,
                                         (lr, lr), r)
        return _reference_covariance(x["e"], lp, x["psf"], r, x["var_e"], jac, var_q, x["var_p"],
                                     0.7, x["var_obs"], detach)

    def parametric(x):
        return pc.parametric_residual_covariance(
            x["e"], est, x["m"], x["psf"], r, n_phases=P, var_emitter=x["var_e"],
            var_phase=x["var_phase"], var_modulation=x["var_mod"], var_k=x["var_k"],
            var_psf=x["var_p"], psf_var_weight=0.7, var_obs=x["var_obs"], detach_mean_in_var=detach)

    def generic(x):
        lp = pattern_maps(est, x["m"], P, (lr, lr), r)
        jac, var_q = fc.pattern_jacobian(est, x["m"], x["var_phase"], x["var_mod"], x["var_k"], P,
                                         (lr, lr), r)
        return fc.residual_covariance(x["e"], lp, x["psf"], r, var_emitter=x["var_e"],
                                      lp_jacobian=jac, lp_param_var=var_q, var_psf=x["var_p"],
                                      psf_var_weight=0.7, var_obs=x["var_obs"],
                                      detach_mean_in_var=detach)

    def value_and_grad(fn):  # one compiled program per path (eager autodiff is much slower)
        return jax.jit(jax.value_and_grad(lambda x: (weights * fn(x)).sum()))(v)

    ref = np.asarray(jax.jit(reference)(v), np.float64)
    scale = np.diagonal(ref, axis1=-2, axis2=-1).max()
    _, grad_ref = value_and_grad(reference)
    for fn in (parametric, generic):
        # float32: entries are sums of ~10² FFT-convolved terms of size ≤ scale, so the round-off
        # is ~1e-6·scale (measured ≤ 1.1e-6); the old and new orders of summation differ.
        np.testing.assert_allclose(jax.jit(fn)(v), ref, rtol=1e-4, atol=1e-5 * scale)
        _, grad = value_and_grad(fn)
        for key in v:
            g_ref = np.asarray(grad_ref[key], np.float64)
            np.testing.assert_allclose(grad[key], g_ref, rtol=1e-3, atol=1e-4 * np.abs(g_ref).max(),
                                       err_msg=key)


@pytest.mark.parametrize(("hr", "size", "r"), [(16, 28, 2), (15, 9, 3), (18, 14, 3), (12, 5, 1)])
def test_decimated_fft_equals_strided_full_convolution(hr, size, r):
    """``conv_full`` sampled at ``r·i + r − 1 + K//2`` through the small grid and the folded
    inverse FFT, including offsets that are not multiples of ``r`` (shifted input)."""
    rng = np.random.default_rng(hr)
    x = _f32(rng.standard_normal((2, 3, hr, hr + 1)))
    kernel = _f32(rng.standard_normal((2, 1, size, size)))
    psf_size = size - r + 1  # the merged kernel G of a K-tap PSF has K + r − 1 taps
    off, h, w = r - 1 + psf_size // 2, hr // r, (hr + 1) // r
    grid = (lc.lr_grid(hr + size - 1, off, h, r, hr), lc.lr_grid(hr + size, off, w, r, hr + 1))
    got = lc.decimated_irfft2(lc.filtered(x, kernel, grid), grid, r, (h, w))
    full = ph.fft_convolve(x, kernel, "full")
    # Two float32 FFT paths over the full grid: forward, product, (folded) inverse.
    assert_f32_close(got, full[..., off : off + r * h : r, off : off + r * w : r],
                     (hr + size - 1) * (hr + size), depth=2, scale=full)
