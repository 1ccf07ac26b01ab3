"""Variance propagation through the SIM forward model vs Monte Carlo (docs/design.md §4, §5).

Monte-Carlo tolerances: with N independent draws, the sample variance of a near-Gaussian quantity
has relative standard error SE = sqrt(2/(N − 1)) = 1.0% at N = 20 000. Per pixel we allow
5 SE = 5.0% (a 5-sigma band; the maps have ≤ 144 pixels, so a false alarm has probability
< 1e-4 even with slightly heavier-than-Gaussian tails of products), and the pixel-averaged ratio
MC / exact must be within 3% (its SE is at most the per-pixel 1%, pixels being positively
correlated). Every mismatch the tests guard against (wrong orientation, independent pooling,
missing PSF terms) is ≥ 30%.
"""

import functools
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simuq_core.config import UQParams
from simuq_core.optics import imaging as ph
from simuq_core.uncertainty import logvar_bounds as lb
from simuq_core.uncertainty import propagation as uq
from simuq_core.uncertainty.monte_carlo import MonteCarloVariance, mc_propagate_rec_variance
from tests._tolerance import assert_f32_close

N_MC = 20_000
SE = math.sqrt(2.0 / (N_MC - 1))
PIXEL_TOL = 5 * SE
MEAN_TOL = 0.03


def _f32(x) -> jnp.ndarray:
    return jnp.asarray(x, jnp.float32)


def _airy(r: int) -> jnp.ndarray:
    """BioSR-like Airy PSF on the HR grid of factor r, default size (K = 27 at r=2, 39 at r=3)."""
    pixel_nm = 62.6 / r
    size = ph.default_psf_size(1.3, 488.0, pixel_nm)
    return _f32(ph.airy_psf(size, 1.3, 488.0, pixel_nm))[None]


def _latents(seed: int, r: int, lr: int, frames: int = 1):
    """Means and moderate variances (CV ≤ 0.45) for one sample: e, l, Var e, Var l."""
    rng = np.random.default_rng(seed)
    hr = lr * r
    e = _f32(rng.uniform(0.5, 1.5, (1, hr, hr)))
    lp = _f32(rng.uniform(0.5, 1.5, (1, frames, hr, hr)))
    var_e = _f32(rng.uniform(0.005, 0.05, (1, hr, hr)))
    var_l = _f32(rng.uniform(0.005, 0.05, (1, frames, hr, hr)))
    return e, lp, var_e, var_l


def _assert_matches_mc(exact: jnp.ndarray, mc: jnp.ndarray) -> None:
    ratio = np.asarray(mc) / np.asarray(exact)
    assert np.isfinite(ratio).all()
    assert abs(ratio.mean() - 1.0) < MEAN_TOL, f"mean MC/exact = {ratio.mean():.4f}"
    worst = np.abs(ratio - 1.0).max()
    assert worst < PIXEL_TOL, f"worst pixel MC/exact off by {worst:.4f} (> {PIXEL_TOL:.4f})"


def _mc(seed: int, *args, **kwargs) -> MonteCarloVariance:
    return mc_propagate_rec_variance(jax.random.key(seed), *args, n_samples=N_MC, **kwargs)


# ----------------------------------------------------------------------------------------------
# Exact rules vs Monte Carlo
# ----------------------------------------------------------------------------------------------


def test_product_rule_matches_monte_carlo():
    # Large coefficients of variation so the Var(e)·Var(l) term is ~10% of the total. Products of
    # Gaussians have heavy tails, so the standard error of each sample variance is estimated from
    # the draws themselves: SE = sqrt((m4 − s⁴)/N) (= s²·sqrt(2/N) for a Gaussian).
    rng = np.random.default_rng(0)
    shape = (1, 2, 12, 12)
    mu_e = rng.uniform(0.3, 0.6, (1, 12, 12))
    mu_l = rng.uniform(0.3, 0.6, shape)
    var_e = rng.uniform(0.02, 0.06, (1, 12, 12))
    var_l = rng.uniform(0.02, 0.06, shape)
    exact = np.asarray(uq.product_variance(_f32(mu_e), _f32(mu_l), _f32(var_e), _f32(var_l)))

    e = mu_e[:, None] + np.sqrt(var_e[:, None]) * rng.standard_normal((N_MC, *shape[:1], 1, 12, 12))
    lp = mu_l + np.sqrt(var_l) * rng.standard_normal((N_MC, *shape))
    s = e * lp
    var_mc = s.var(axis=0, ddof=1)
    m4 = ((s - s.mean(axis=0)) ** 4).mean(axis=0)
    se = np.sqrt((m4 - var_mc**2) / N_MC)
    z = (var_mc - exact) / se
    assert np.abs(z).max() < 5.0, f"worst pixel {np.abs(z).max():.2f} SE off"
    assert abs((var_mc / exact).mean() - 1.0) < MEAN_TOL

    # A first-order rule without Var(e)·Var(l) is ~10% low: many SE off.
    first_order = mu_e[:, None] ** 2 * var_l + mu_l**2 * var_e[:, None]
    assert (var_mc / first_order).mean() > 1.0 + 2 * MEAN_TOL
    # Non-targets: None is zero variance.
    only_l = uq.product_variance(_f32(mu_e), _f32(mu_l), None, _f32(var_l))
    np.testing.assert_allclose(only_l, mu_e[:, None] ** 2 * var_l, rtol=1e-5)
    assert uq.product_variance(_f32(mu_e), _f32(mu_l)) is None


def test_mc_reference_reproduces_the_product_rule():
    # r = 1 and a delta PSF: rec = S = e·l, so the MC engine must reproduce the product rule.
    e, lp, var_e, var_l = _latents(0, r=1, lr=12, frames=2)
    delta = jnp.ones((1, 1, 1), jnp.float32)
    exact = uq.propagate_rec_variance(e, lp, delta, 1, var_emitter=var_e, var_light_pattern=var_l)
    np.testing.assert_allclose(exact.var_rec, exact.var_deconv, rtol=1e-5)
    mc = _mc(1, e, lp, delta, 1, var_emitter=var_e, var_light_pattern=var_l)
    np.testing.assert_allclose(mc.rec, exact.rec, rtol=0.01)
    _assert_matches_mc(exact.var_rec, mc.var_rec)


def _asymmetric_kernel() -> jnp.ndarray:
    """A 5×5 kernel with most of its mass in one corner (far from any of its mirror images)."""
    k = np.full((5, 5), 0.01)
    k[0, 3:] = [0.3, 0.2]
    k[1, 4] = 0.15
    k[3, 1] = 0.05
    return _f32(k / k.sum())[None]


@pytest.mark.parametrize("r", [1, 2])
def test_asymmetric_kernel_matches_mc_and_orientation_matters(r):
    lr = 12
    hr = lr * r
    rng = np.random.default_rng(2)
    e = _f32(rng.uniform(0.5, 1.5, (1, hr, hr)))
    lp = jnp.ones((1, 1, hr, hr), jnp.float32)
    # A faint uniform variance plus one bright pixel: the output variance map is the kernel's
    # (squared, pooled) footprint, which is where orientation shows.
    var_e = np.full((1, hr, hr), 1e-4)
    var_e[0, hr // 2, hr // 2] = 0.2
    var_e = _f32(var_e)
    kernel = _asymmetric_kernel()
    exact = uq.propagate_rec_variance(e, lp, kernel, r, var_emitter=var_e)
    mc = _mc(3, e, lp, kernel, r, var_emitter=var_e)
    np.testing.assert_allclose(mc.rec, exact.rec, rtol=0.02)
    _assert_matches_mc(exact.var_rec, mc.var_rec)

    # Variance path with the flipped kernel (cross-correlation instead of convolution, while the
    # MC mean path keeps the true orientation): must be grossly wrong.
    flipped = kernel[:, ::-1, ::-1]
    wrong = uq.propagate_rec_variance(e, lp, flipped, r, var_emitter=var_e)
    ratio = np.asarray(mc.var_rec / wrong.var_rec)
    assert np.abs(ratio - 1.0).max() > 10 * PIXEL_TOL


def test_pooling_of_independent_pixels():
    # Delta PSF: rec = block mean of S, Var = mean(Var S) / r² exactly, in both pooling modes.
    r = 3
    e, lp, var_e, var_l = _latents(4, r=r, lr=12, frames=1)
    delta = jnp.ones((1, 1, 1), jnp.float32)
    kw = dict(var_emitter=var_e, var_light_pattern=var_l)
    exact = uq.propagate_rec_variance(e, lp, delta, r, **kw)
    closed_form = ph.block_mean(exact.var_deconv, r) / r**2
    np.testing.assert_allclose(exact.var_rec, closed_form, rtol=1e-5)
    independent = uq.propagate_rec_variance(e, lp, delta, r, pool_var="independent", **kw)
    np.testing.assert_allclose(independent.var_rec, closed_form, rtol=1e-5)
    mc = _mc(5, e, lp, delta, r, **kw)
    _assert_matches_mc(exact.var_rec, mc.var_rec)
    # Forgetting the 1/r² of averaging would be 9× off.
    assert float((mc.var_rec / ph.block_mean(exact.var_deconv, r)).mean()) < 0.2


@functools.cache
def _airy_case(r: int):
    """Exact, independent-rule and MC variances for latent e, l variances behind an Airy PSF."""
    lr = 12 if r == 2 else 8
    e, lp, var_e, var_l = _latents(10 + r, r=r, lr=lr, frames=1)
    psf = _airy(r)
    kw = dict(var_emitter=var_e, var_light_pattern=var_l)
    exact = uq.propagate_rec_variance(e, lp, psf, r, **kw)
    independent = uq.propagate_rec_variance(e, lp, psf, r, pool_var="independent", **kw)
    mc = _mc(20 + r, e, lp, psf, r, **kw)
    return exact, independent, mc


@pytest.mark.parametrize("r", [2, 3])
def test_psf_then_pooling_exact_rule_matches_mc(r):
    exact, _, mc = _airy_case(r)
    np.testing.assert_allclose(mc.rec, exact.rec, rtol=0.02)
    _assert_matches_mc(exact.var_rec, mc.var_rec)


@pytest.mark.parametrize("r,lower,upper", [(2, 3.0, 4.5), (3, 7.0, 10.0)])
def test_independent_rule_underestimates_after_airy_psf(r, lower, upper):
    # Measured median MC / independent-rule factor (N = 20 000, these seeds): 3.85 (pixel range
    # 3.77–3.94) at r = 2 and 8.60 (8.41–8.78) at r = 3; docs/design.md §4.2 quotes 3.8× and 8.6×.
    # The requirement is > 2× at r = 3; the band also pins the factor so a change in either rule
    # shows.
    _, independent, mc = _airy_case(r)
    factor = float(np.median(np.asarray(mc.var_rec / independent.var_rec)))
    assert lower < factor < upper, f"under-estimation factor {factor:.2f} at r={r}"
    if r == 3:
        assert factor > 2.0


@pytest.mark.parametrize("with_latent", [False, True])
def test_shared_random_psf_matches_mc(with_latent):
    # One PSF draw per MC sample, shared by every pixel: coherent errors that pooling does not
    # average away (docs/design.md §4.3). Per-tap std = 20% of the tap (+ a small constant).
    r = 2
    psf = _airy(r)
    var_psf = (0.2 * psf) ** 2 + 1e-8
    e, lp, var_e, var_l = _latents(30, r=r, lr=12, frames=1)
    kw = dict(var_psf=var_psf)
    if with_latent:
        kw.update(var_emitter=var_e, var_light_pattern=var_l)
    exact = uq.propagate_rec_variance(e, lp, psf, r, **kw)
    mc = _mc(31 + with_latent, e, lp, psf, r, **kw)
    _assert_matches_mc(exact.var_rec, mc.var_rec)
    # The per-pixel (independent) rule misses the coherence: far too low.
    independent = uq.propagate_rec_variance(e, lp, psf, r, pool_var="independent", **kw)
    assert float(np.median(np.asarray(mc.var_rec / independent.var_rec))) > 2.0


def test_psf_var_s_coupling_term_equals_its_definition():
    # conv_full(B(Var S)/r², Var p) is evaluated through a merged kernel; check it against the
    # literal definition on the aligned LR grid.
    rng = np.random.default_rng(17)
    r, lr = 3, 5
    mean_s = _f32(rng.uniform(0.5, 1.5, (2, 2, lr * r, lr * r)))
    var_s = _f32(rng.uniform(0.0, 0.1, (2, 2, lr * r, lr * r)))
    var_p = _f32(rng.uniform(0.0, 1e-3, (2, 7, 7)))
    with_s = uq.psf_uncertainty_variance(mean_s, var_s, var_p, r)
    without = uq.psf_uncertainty_variance(mean_s, None, var_p, r)
    box_var = uq._box_mean_full(var_s, r) / r**2
    literal = uq._sample_lr(ph.fft_convolve(box_var, var_p[:, None], "full"), r, 7, lr, lr)
    np.testing.assert_allclose(with_s - without, literal, rtol=1e-3, atol=1e-9)
    coherent = uq._sample_lr(
        ph.fft_convolve(uq._box_mean_full(mean_s, r) ** 2, var_p[:, None], "full"), r, 7, lr, lr
    )
    np.testing.assert_allclose(without, coherent, rtol=1e-5)


def test_pooled_sampling_offset_matches_forward_model():
    # rec[i] = conv_full(B(S), p)[r·i + r − 1 + K//2] with B(x) = conv_full(x, box_r)/r².
    rng = np.random.default_rng(7)
    r, lr = 3, 6
    s = _f32(rng.uniform(0.0, 1.0, (2, 3, lr * r, lr * r)))
    kernel = _f32(rng.uniform(0.0, 1.0, (2, 7, 7)))
    full = ph.fft_convolve(uq._box_mean_full(s, r), kernel[:, None], "full")
    sampled = uq._sample_lr(full, r, 7, lr, lr)
    rec = ph.forward_model(jnp.ones((2, lr * r, lr * r), jnp.float32), s, kernel, r)
    np.testing.assert_allclose(sampled, rec, atol=1e-5)


@pytest.mark.parametrize("with_psf", [False, True])
def test_modes_agree_without_pooling(with_psf):
    # At r = 1 there is nothing to pool: the original rule is exact, PSF terms included.
    e, lp, var_e, var_l = _latents(8, r=1, lr=10, frames=2)
    psf = _asymmetric_kernel()
    kw = dict(var_emitter=var_e, var_light_pattern=var_l)
    if with_psf:
        kw["var_psf"] = (0.3 * psf) ** 2
    exact = uq.propagate_rec_variance(e, lp, psf, 1, **kw)
    independent = uq.propagate_rec_variance(e, lp, psf, 1, pool_var="independent", **kw)
    np.testing.assert_allclose(exact.var_rec, independent.var_rec, rtol=1e-4, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Observation noise, floor, disabled targets
# ----------------------------------------------------------------------------------------------


def test_observation_noise_and_floor():
    a, b, floor = 0.02, 3e-4, 1e-6
    params = uq.init_obs_noise_params(a, b)
    a_got, b_got = uq.obs_noise_coefficients(params)
    assert float(a_got) == pytest.approx(a, rel=1e-5)
    assert float(b_got) == pytest.approx(b, rel=1e-5)

    r, lr = 2, 6
    e, lp, var_e, _ = _latents(9, r=r, lr=lr, frames=2)
    psf = _airy(r)
    # A background ramp from −2 to +1 makes part of rec negative: shot noise must not go negative.
    background = _f32(np.broadcast_to(np.linspace(-2.0, 1.0, lr), (1, lr, lr)))
    kw = dict(var_emitter=var_e, var_floor=floor, background=background)
    out = uq.propagate_rec_variance(
        e, lp, psf, r, obs_noise="poisson_gaussian", obs_noise_params=params, **kw
    )
    rec = np.asarray(out.rec)
    assert rec.min() < 0 < rec.max()
    np.testing.assert_allclose(out.var_obs, a * np.maximum(rec, 0.0) + b, rtol=1e-5)
    np.testing.assert_allclose(out.var_rec, out.var_latent + out.var_obs + floor, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.var_obs)[rec < 0], b, rtol=1e-5)

    var_map = _f32(np.random.default_rng(1).uniform(0.0, 0.01, (1, 1, lr, lr)))
    mapped = uq.propagate_rec_variance(
        e, lp, psf, r, obs_noise="poisson_gaussian_map", obs_noise_params=params,
        obs_var_map=var_map, **kw,
    )
    np.testing.assert_allclose(mapped.var_obs, out.var_obs + var_map, rtol=1e-6)

    none = uq.propagate_rec_variance(e, lp, psf, r, **kw)
    assert float(jnp.abs(none.var_obs).max()) == 0.0
    np.testing.assert_allclose(none.var_rec, out.var_latent + floor, rtol=1e-6)
    with pytest.raises(ValueError, match="obs_noise_params"):
        uq.propagate_rec_variance(e, lp, psf, r, obs_noise="poisson_gaussian")
    with pytest.raises(ValueError, match="obs_var_map"):
        uq.propagate_rec_variance(e, lp, psf, r, obs_noise="poisson_gaussian_map",
                                  obs_noise_params=params)
    with pytest.raises(ValueError, match="pool_var"):
        uq.propagate_rec_variance(e, lp, psf, r, pool_var="diagonal")


def test_disabled_targets_contribute_zero():
    r = 2
    e, lp, var_e, var_l = _latents(11, r=r, lr=6, frames=2)
    psf = _airy(r)
    var_psf = (0.1 * psf) ** 2
    nothing = uq.propagate_rec_variance(e, lp, psf, r)
    assert float(jnp.abs(nothing.var_rec).max()) == 0.0
    assert float(jnp.abs(nothing.var_deconv).max()) == 0.0
    np.testing.assert_allclose(nothing.rec, ph.forward_model(e, lp, psf, r))

    only_e = uq.propagate_rec_variance(e, lp, psf, r, var_emitter=var_e)
    zero_l = uq.propagate_rec_variance(e, lp, psf, r, var_emitter=var_e,
                                       var_light_pattern=jnp.zeros_like(lp))
    np.testing.assert_allclose(only_e.var_rec, zero_l.var_rec, rtol=1e-6)

    full = dict(var_emitter=var_e, var_light_pattern=var_l)
    no_psf = uq.propagate_rec_variance(e, lp, psf, r, **full)
    off = uq.propagate_rec_variance(e, lp, psf, r, var_psf=var_psf, psf_var_weight=0.0, **full)
    np.testing.assert_allclose(off.var_rec, no_psf.var_rec)
    one = uq.propagate_rec_variance(e, lp, psf, r, var_psf=var_psf, **full)
    two = uq.propagate_rec_variance(e, lp, psf, r, var_psf=var_psf, psf_var_weight=2.0, **full)
    psf_part = one.var_rec - no_psf.var_rec
    assert float(psf_part.min()) > 0.0
    np.testing.assert_allclose(two.var_rec - no_psf.var_rec, 2.0 * psf_part, rtol=1e-4)

    chosen = uq.target_variances(["lp"], emitter=var_e, light_pattern=var_l, psf=var_psf)
    assert chosen["var_emitter"] is None and chosen["var_psf"] is None
    assert chosen["var_light_pattern"] is var_l
    with pytest.raises(ValueError, match="unknown"):
        uq.target_variances(["emiter"])


def test_detach_mean_in_var_stops_mean_gradients_only():
    r = 2
    e, lp, var_e, var_l = _latents(12, r=r, lr=6, frames=2)
    psf = _airy(r)
    params = uq.init_obs_noise_params(0.01, 1e-4)

    def total_var(e_, var_e_, detach):
        out = uq.propagate_rec_variance(
            e_, lp, psf, r, var_emitter=var_e_, var_light_pattern=var_l, var_psf=(0.1 * psf) ** 2,
            obs_noise="poisson_gaussian", obs_noise_params=params, detach_mean_in_var=detach,
        )
        return out.var_rec.sum() + out.rec.sum()

    g_mean, g_var = jax.grad(total_var, argnums=(0, 1))(e, var_e, True)
    g_rec = jax.grad(lambda e_: ph.forward_model(e_, lp, psf, r).sum())(e)
    # only via rec (two float32 FFT paths, forward and adjoint, over the full grid)
    assert_f32_close(g_mean, g_rec, (e.shape[-1] + psf.shape[-1] - 1) ** 2, depth=2)
    assert float(jnp.abs(g_var).min()) > 0.0
    g_mean_attached = jax.grad(total_var)(e, var_e, False)
    assert float(jnp.abs(g_mean_attached - g_rec).max()) > 1e-3


# ----------------------------------------------------------------------------------------------
# Log-variance bounds
# ----------------------------------------------------------------------------------------------

LO, HI = -10.0, 3.0


def test_bound_logvar_hard_is_the_original_clip():
    x = _f32([-20.0, -10.0, -4.0, 3.0, 7.0])
    np.testing.assert_allclose(lb.bound_logvar(x, LO, HI, "hard"), [-10, -10, -4, 3, 3])
    grad = jax.vmap(jax.grad(lambda v: lb.bound_logvar(v, LO, HI, "hard")))(_f32([-15.0, 5.0]))
    np.testing.assert_array_equal(grad, [0.0, 0.0])


def test_bound_logvar_soft_is_bounded_smooth_and_identity_inside():
    x = jnp.linspace(-1e4, 1e4, 20_001, dtype=jnp.float32)
    x = jnp.concatenate([x, jnp.linspace(-30.0, 20.0, 5_001, dtype=jnp.float32)])
    y = lb.bound_logvar(x, LO, HI, "soft")
    # Strictly inside mathematically; far out (|x| ~ 1e4) float32 rounds y onto the bound.
    assert bool(jnp.all((y >= LO) & (y <= HI)))
    near = jnp.linspace(-30.0, 20.0, 501, dtype=jnp.float32)
    y_near = lb.bound_logvar(near, LO, HI, "soft")
    assert bool(jnp.all((y_near > LO) & (y_near < HI)))
    grad = jax.vmap(jax.grad(lambda v: lb.bound_logvar(v, LO, HI, "soft")))(x)
    assert bool(jnp.all(jnp.isfinite(grad)))
    # Strictly positive everywhere, including far outside the bounds (algebraic tails, float32).
    assert float(grad.min()) > 0.0
    outside = _f32([LO - 1e3, LO - 50.0, LO - 5.0, HI + 5.0, HI + 50.0, HI + 1e3])
    g_out = jax.vmap(jax.grad(lambda v: lb.bound_logvar(v, LO, HI, "soft")))(outside)
    assert float(g_out.min()) > 0.0
    # ≈ identity at least 2 units from both bounds (|y − x| ≤ s²/d = 0.125 for s = 0.5, d = 2).
    inside = jnp.linspace(LO + 2.0, HI - 2.0, 101, dtype=jnp.float32)
    assert float(jnp.abs(lb.bound_logvar(inside, LO, HI, "soft") - inside).max()) < 0.15
    # The derivative is continuous where the piecewise evaluation switches form (x = lo, hi).
    for edge in (LO, HI):
        g_edge = jax.grad(lambda v: lb.bound_logvar(v, LO, HI, "soft"))(jnp.float32(edge))
        g_side = jax.vmap(jax.grad(lambda v: lb.bound_logvar(v, LO, HI, "soft")))(
            _f32([edge - 1e-3, edge + 1e-3]))
        assert float(g_edge) == pytest.approx(float(g_side.mean()), abs=1e-4)
    # Monotone.
    order = jnp.argsort(x)
    assert bool(jnp.all(jnp.diff(y[order]) >= 0))


@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("init", [-4.0, -9.5, 2.9, -2.0])
def test_logvar_bias_init_inverts_the_bound(mode, init):
    bias = lb.logvar_bias_init(init, LO, HI, mode)
    assert float(lb.bound_logvar(_f32(bias), LO, HI, mode)) == pytest.approx(init, abs=1e-5)
    if mode == "soft" and init in (-9.5, 2.9):
        assert abs(bias - init) > 0.1  # near a bound the soft inverse pushes the bias outward
    np.testing.assert_allclose(
        lb.variance_from_logvar(_f32(bias), LO, HI, mode), math.exp(init), rtol=1e-5
    )


def test_logvar_bias_init_rejects_a_soft_bound_value():
    with pytest.raises(ValueError, match="strictly"):
        lb.logvar_bias_init(LO, LO, HI, "soft")
    assert lb.logvar_bias_init(LO, LO, HI, "hard") == LO


# ----------------------------------------------------------------------------------------------
# jit, options, finiteness
# ----------------------------------------------------------------------------------------------


def test_options_from_uq_params_cover_every_field():
    params = UQParams(pool_var="independent", psf_var_weight=0.5, obs_noise="poisson_gaussian",
                      var_floor=1e-5, detach_mean_in_var=True)
    assert uq.propagation_options(params) == {
        "psf_var_weight": 0.5, "pool_var": "independent", "obs_noise": "poisson_gaussian",
        "var_floor": 1e-5, "detach_mean_in_var": True,
    }
    # Every obs_noise / pool_var value the schema accepts is supported here.
    schema = UQParams.model_fields
    for name, supported in (("obs_noise", uq.OBS_NOISE_MODES), ("pool_var", uq.POOL_VAR_MODES),
                            ("logvar_bound", lb.LOGVAR_BOUND_MODES)):
        assert set(typing.get_args(schema[name].annotation)) <= set(supported), name


@pytest.mark.parametrize("pool_var", ["exact", "independent"])
def test_jit_does_not_recompile_and_outputs_are_finite(pool_var):
    traces = []
    opts = uq.propagation_options(UQParams(pool_var=pool_var, obs_noise="poisson_gaussian_map"))

    @jax.jit
    def step(e, lp, psf, var_e, var_l, var_p, noise, var_map):
        traces.append(1)

        def prop(v):
            return uq.propagate_rec_variance(
                e, lp, psf, 2, var_emitter=v, var_light_pattern=var_l, var_psf=var_p,
                obs_noise_params=noise, obs_var_map=var_map, **opts,
            )

        return prop(var_e), jax.grad(lambda v: jnp.log(prop(v).var_rec).sum())(var_e)

    psf = jnp.concatenate([_airy(2), _airy(2)])
    noise = uq.init_obs_noise_params()
    for seed in (13, 14):
        e, lp, var_e, var_l = _latents(seed, r=2, lr=6, frames=9)
        e, lp = jnp.concatenate([e, e]), jnp.concatenate([lp, lp])
        var_e, var_l = jnp.concatenate([var_e, var_e]), jnp.concatenate([var_l, var_l])
        var_map = jnp.full((2, 1, 6, 6), 1e-3, jnp.float32)
        out, grad = step(e, lp, psf, var_e, var_l, (0.1 * psf) ** 2, noise, var_map)
        assert out.rec.shape == out.var_rec.shape == (2, 9, 6, 6)
        assert out.var_deconv.shape == (2, 9, 12, 12)
        for leaf in jax.tree.leaves((out, grad)):
            assert bool(jnp.all(jnp.isfinite(leaf)))
        assert float(out.var_rec.min()) > 0.0
    assert len(traces) == 1


def test_shared_2d_psf_equals_per_sample_psf():
    e, lp, var_e, var_l = _latents(15, r=2, lr=6, frames=3)
    psf = _airy(2)
    kw = dict(var_emitter=var_e, var_light_pattern=var_l)
    per_sample = uq.propagate_rec_variance(e, lp, psf, 2, var_psf=(0.1 * psf) ** 2, **kw)
    shared = uq.propagate_rec_variance(e, lp, psf[0], 2, var_psf=(0.1 * psf[0]) ** 2, **kw)
    # float32 FFT convolutions over the full grid, the shared kernel broadcast differently
    assert_f32_close(shared.var_rec, per_sample.var_rec, (e.shape[-1] + psf.shape[-1] - 1) ** 2,
                     depth=2)


def test_mc_rejects_a_chunk_that_does_not_divide():
    e, lp, var_e, _ = _latents(16, r=1, lr=4)
    with pytest.raises(ValueError, match="divide"):
        mc_propagate_rec_variance(jax.random.key(0), e, lp, jnp.ones((1, 1, 1)), 1,
                                     var_emitter=var_e, n_samples=10, chunk_size=3)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_one_pass_exact_variance_equals_the_term_by_term_rules(r):
    """propagate_rec_variance's fused exact path (shared inverse FFT, merged PSF terms) equals
    pooled_latent_variance + psf_uncertainty_variance evaluated separately."""
    from simuq_core.uncertainty.propagation import (
        pooled_latent_variance,
        product_variance,
        propagate_rec_variance,
        psf_uncertainty_variance,
    )

    rng = np.random.default_rng(3)
    b, f, h, w, k = 2, 3, 5, 6, 7
    e = jnp.asarray(rng.random((b, h * r, w * r)), jnp.float32)
    lp = jnp.asarray(rng.random((b, f, h * r, w * r)) + 0.5, jnp.float32)
    p = rng.random((b, k, k)) ** 2
    p = jnp.asarray(p / p.sum(axis=(1, 2), keepdims=True), jnp.float32)
    ve = jnp.asarray(0.1 * rng.random((b, h * r, w * r)), jnp.float32)
    vl = jnp.asarray(0.05 * rng.random((b, f, h * r, w * r)), jnp.float32)
    vp = jnp.asarray(0.2 * np.asarray(p) ** 2 * rng.random((b, k, k)), jnp.float32)
    fused = propagate_rec_variance(e, lp, p, r, var_emitter=ve, var_light_pattern=vl,
                                   var_psf=vp, psf_var_weight=0.7).var_latent
    vs = product_variance(e, lp, ve, vl)
    separate = (pooled_latent_variance(vs, p, r)
                + 0.7 * psf_uncertainty_variance(e[:, None] * lp, vs, vp, r))
    # Two float32 orders of FFTs over the full grid (shared inverse vs one per term).
    assert_f32_close(fused, separate, (h * r + k + r - 2) * (w * r + k + r - 2), depth=2)


# -- leave-one-out local residual energy (input of the observation-noise map head) -------------


def test_local_residual_energy_is_the_leave_one_out_window_mean(rng):
    x = rng.normal(size=(2, 3, 9, 11))
    rec = rng.normal(size=(2, 3, 9, 11))
    got = np.asarray(uq.local_residual_energy(jnp.asarray(x), jnp.asarray(rec), 5))
    r2 = ((x - rec) ** 2).mean(axis=1)
    ref = np.zeros((2, 9, 11))
    for b in range(2):
        for i in range(9):
            for j in range(11):
                win = r2[b, max(i - 2, 0):i + 3, max(j - 2, 0):j + 3]
                ref[b, i, j] = (win.sum() - r2[b, i, j]) / (win.size - 1)
    np.testing.assert_allclose(got[:, 0], ref, rtol=1e-5)


def test_local_residual_energy_estimates_a_smooth_noise_level_without_the_pixel_itself(rng):
    """Pure noise with a smooth σ map: E[L] = σ² up to the window's spatial averaging (checked
    where σ varies slowly), and L(i) does not depend on the residual at i (zero gradient, and
    changing x at i leaves L(i) unchanged)."""
    h = w = 32
    yy, xx = np.mgrid[:h, :w]
    sigma = 0.05 * (1 + 0.5 * np.sin(2 * np.pi * yy / h))  # smooth along y only
    n = 400
    x = sigma * rng.normal(size=(n, 9, h, w))
    energy = np.asarray(uq.local_residual_energy(jnp.asarray(x), jnp.zeros_like(jnp.asarray(x)), 5))
    mean = energy.mean(axis=0)[0]
    # Expected: the window average of σ² (exact for independent noise), rows 2..h-3 (full windows).
    s2 = sigma**2
    ref = np.zeros_like(s2)
    for i in range(2, h - 2):
        ref[i] = (s2[i - 2:i + 3].sum(axis=0) * 5 - s2[i]) / 24
    # Each pixel of `mean` averages n·9·24 squared normals: relative sd √(2/(n·216)) ≈ 0.5 %.
    rel = mean[2:-2, 2:-2] / ref[2:-2, 2:-2] - 1
    assert np.abs(rel).max() < 5 * np.sqrt(2 / (n * 9 * 24))
    x1 = x[:1].copy()
    x1[0, :, 10, 10] += 5.0
    moved = np.asarray(uq.local_residual_energy(jnp.asarray(x1), jnp.zeros((1, 9, h, w)), 5))
    # (float32 cancellation of the +5 outlier in the window sum: ~1e-6 absolute; including it
    # would add about 5²/24 ≈ 1)
    assert moved[0, 0, 10, 10] == pytest.approx(energy[0, 0, 10, 10], abs=2e-5)
    assert moved[0, 0, 10, 11] > energy[0, 0, 10, 11]
    grad = jax.grad(lambda a: uq.local_residual_energy(a, jnp.zeros_like(a), 3).sum())(
        jnp.asarray(x[:1]))
    assert float(jnp.abs(grad).max()) == 0.0


def test_obs_map_window_must_be_odd():
    with pytest.raises(ValueError, match="obs_map_window must be odd"):
        UQParams(obs_map_window=4)
    with pytest.raises(ValueError, match="window must be odd"):
        uq.local_residual_energy(jnp.zeros((1, 1, 4, 4)), jnp.zeros((1, 1, 4, 4)), 2)
