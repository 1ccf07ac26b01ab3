"""Classical pattern estimation and the parametric light pattern (simuq_core/pattern.py)."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from simuq_core.config import parse_params
from simuq_core.optics.imaging import illumination_patterns
from simuq_core.pattern.estimate import PatternEstimate, estimate_pattern
from simuq_core.pattern.maps import pattern_maps, pattern_variance
from simuq_core.simulation.samples import simulate_sample
from tests._tiny import tiny_raw
from tests._tolerance import assert_f32_close

ROOT = Path(__file__).resolve().parents[1]
NA, WAVELENGTH, PIXEL = 1.3, 488.0, 62.6
CUTOFF = 2 * NA * PIXEL / WAVELENGTH


def _sim_cfg(**overrides):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    if "pattern_period_lr" in overrides:  # the microscope's pattern period is the simulated one
        raw["microscope"]["pattern_period_px"] = overrides.pop("pattern_period_lr")
    raw["simulate"] |= overrides
    # the tests speak of the default photon budget: every sample at it, not the training range
    raw["simulate"]["noise"]["photon_range"] = 1.0
    return parse_params(raw).simulate


def _samples(n: int, seed: int, **overrides):
    cfg = _sim_cfg(**overrides)
    rng = np.random.default_rng(seed)
    samples = [simulate_sample(rng, cfg) for _ in range(n)]
    norm = lambda s, a: (a - s.norm_offset) / s.norm_scale  # noqa: E731
    return cfg, samples, np.stack([norm(s, s.raw) for s in samples]), np.stack(
        [norm(s, s.clean) for s in samples])


def _errors(est: PatternEstimate, samples, shape):
    """|k error| (cycles/px) and wrapped phase error at the centre, sign-aligned per angle."""
    h, w = shape
    k_err, ph_err = [], []
    for i, s in enumerate(samples):
        kt = s.pattern.k.reshape(3, 3, 2)[:, 0]
        phi = s.pattern.phase.reshape(3, 3)[:, 0] + 2 * np.pi * (kt[:, 0] * h / 2 + kt[:, 1] * w / 2)
        ke = np.asarray(est.k[i])
        sign = np.sign((ke * kt).sum(-1))
        k_err.append(np.linalg.norm(ke - sign[:, None] * kt, axis=-1))
        ph_err.append(np.angle(np.exp(1j * (sign * np.asarray(est.phase[i]) - phi))))
    return np.concatenate(k_err), np.concatenate(ph_err)


@pytest.fixture(scope="module")
def default_samples():
    return _samples(24, seed=3)


def test_estimate_recovers_wave_vector_and_phase_on_clean_frames(default_samples):
    """Noise-free frames of the default geometry (32 px, period 5 px, random angles/phases): the
    normalised band match is unbiased up to the crop's truncation. Measured: median |Δk| 7e-4
    cycles/px, median |Δφ| 0.01 rad; 72 angles."""
    cfg, samples, _, clean = default_samples
    est = estimate_pattern(jnp.asarray(clean), 3, CUTOFF, k_range=(0.14, 0.27))
    k_err, ph_err = _errors(est, samples, clean.shape[-2:])
    assert np.median(k_err) < 1.5e-3 and k_err.max() < 5e-3
    assert np.median(np.abs(ph_err)) < 0.03 and np.abs(ph_err).max() < 0.2
    assert float(np.min(est.contrast)) > 0.9


def test_estimate_on_noisy_frames_gives_an_accurate_light_pattern(default_samples):
    """At the default photon budget the parametric pattern (with the true m) is within a few
    percent of the simulated one: RMS error well under the pattern's own std (m/√2 = 0.57)."""
    cfg, samples, raw, _ = default_samples
    est = estimate_pattern(jnp.asarray(raw), 3, CUTOFF, k_range=(0.14, 0.27))
    lp = pattern_maps(est, jnp.full((len(samples), 3), cfg.modulation), 3, raw.shape[-2:],
                      cfg.hr_factor)
    gt = np.stack([s.light_pattern for s in samples])
    rms = np.sqrt(((np.asarray(lp) - gt) ** 2).mean(axis=(1, 2, 3)))
    assert np.median(rms) < 0.06 and rms.max() < 0.15, rms


def test_other_periods_and_a_larger_crop():
    for period, size in ((4.0, 32), (7.0, 48), (5.0, 64)):
        cfg, samples, _, clean = _samples(6, seed=int(period * 10), pattern_period_lr=period,
                                          lr_h=size, lr_w=size)
        est = estimate_pattern(jnp.asarray(clean), 3, CUTOFF, k_range=(0.08, 0.45))
        k_err, ph_err = _errors(est, samples, (size, size))
        assert np.median(k_err) < 1.5e-3, (period, size, k_err)
        assert np.median(np.abs(ph_err)) < 0.05, (period, size, ph_err)


def test_reversed_phase_steps_give_the_same_pattern(default_samples):
    """Frames taken with the phase stepping the other way estimate (−k, −φ): the same maps."""
    cfg, samples, raw, _ = default_samples
    flipped = raw.reshape(len(raw), 3, 3, *raw.shape[-2:])[:, :, [0, 2, 1]].reshape(raw.shape)
    m = jnp.full((len(raw), 3), cfg.modulation)
    est = estimate_pattern(jnp.asarray(raw), 3, CUTOFF, k_range=(0.14, 0.27))
    est_f = estimate_pattern(jnp.asarray(flipped), 3, CUTOFF, k_range=(0.14, 0.27))
    assert np.all(np.sum(np.asarray(est.k) * np.asarray(est_f.k), axis=-1) < 0)
    lp = np.asarray(pattern_maps(est, m, 3, raw.shape[-2:], 2))
    lp_f = np.asarray(pattern_maps(est_f, m, 3, raw.shape[-2:], 2))
    lp_f = lp_f.reshape(len(raw), 3, 3, *lp_f.shape[-2:])[:, :, [0, 2, 1]].reshape(lp.shape)
    assert np.sqrt(((lp - lp_f) ** 2).mean()) < 0.02


def _random_pattern(rng, b=2, a=3, origin=None):
    theta = rng.uniform(0, np.pi, (b, a))
    k = 0.2 * np.stack([np.sin(theta), np.cos(theta)], -1)
    return PatternEstimate(jnp.asarray(k, jnp.float32),
                           jnp.asarray(rng.uniform(-np.pi, np.pi, (b, a)), jnp.float32),
                           jnp.ones((b, a), jnp.float32),
                           jnp.zeros((b, 2), jnp.float32) if origin is None else origin)


def test_maps_match_the_simulator_and_average_to_one(rng):
    pat = _random_pattern(rng)
    m = jnp.asarray(rng.uniform(0.5, 0.9, (2, 3)), jnp.float32)
    lp = np.asarray(pattern_maps(pat, m, 3, (16, 20), 3))
    np.testing.assert_allclose(lp.mean(axis=1), 1.0, atol=1e-5)
    from simuq_core.optics.imaging import PatternParams
    for i in range(2):
        k = np.repeat(np.asarray(pat.k[i], np.float64), 3, axis=0)
        phi_corner = np.asarray(pat.phase[i]) - 2 * np.pi * (k[::3, 0] * 8 + k[::3, 1] * 10)
        phase = (phi_corner[:, None] + 2 * np.pi * np.arange(3) / 3).ravel()
        ref = illumination_patterns((48, 60), 3, PatternParams(k, phase, np.repeat(
            np.asarray(m[i], np.float64), 3)))
        np.testing.assert_allclose(lp[i], ref, atol=2e-4)


def test_variance_matches_monte_carlo_for_small_parameter_errors(rng):
    """First-order rule vs 4000 draws of (φ, m, k) errors per angle: per-pixel relative error
    within 5σ of the sample variance's own scatter (√(2/N) ≈ 2.2 %) plus the second-order term."""
    pat = _random_pattern(rng, b=1)
    m = jnp.full((1, 3), 0.8)
    v_phi, v_m, v_k = 0.02**2, 0.01**2, 3e-4**2
    var = np.asarray(pattern_variance(pat, m, jnp.full((1, 3), v_phi), jnp.full((1, 3), v_m),
                                      jnp.full((1, 3), v_k), 3, (16, 16), 2))[0]
    n = 4000
    k = pat.k + rng.normal(0, np.sqrt(v_k), (n, 3, 2))
    phase = pat.phase + rng.normal(0, np.sqrt(v_phi), (n, 3))
    draws = pattern_maps(PatternEstimate(k, phase, jnp.ones((n, 3)), jnp.zeros((n, 2))),
                         m + rng.normal(0, np.sqrt(v_m), (n, 3)), 3, (16, 16), 2)
    mc = np.var(np.asarray(draws, np.float64), axis=0, ddof=1)
    keep = var > 0.05 * var.mean()  # relative errors of near-zero variances are meaningless
    rel = np.abs(mc[keep] / var[keep] - 1)
    assert np.median(rel) < 0.03 and np.quantile(rel, 0.99) < 5 * np.sqrt(2 / n) + 0.03


def test_origin_makes_tiles_one_pattern(rng):
    """A tile given the image's reference point (relative to its own centre) reproduces the
    image's maps and variance on its pixels."""
    pat = _random_pattern(rng, b=1)
    m = jnp.full((1, 3), 0.7)
    v = [jnp.full((1, 3), x) for x in (1e-3, 2e-3, 1e-6)]
    full = np.asarray(pattern_maps(pat, m, 3, (32, 32), 2))[0]
    full_v = np.asarray(pattern_variance(pat, m, *v, 3, (32, 32), 2))[0]
    y0, x0, t = 8, 12, 16  # tile origin / size, camera pixels
    origin = jnp.asarray([[16.0 - (y0 + t / 2), 16.0 - (x0 + t / 2)]], jnp.float32)
    tile = pat._replace(origin=origin)
    sl = (slice(None), slice(2 * y0, 2 * (y0 + t)), slice(2 * x0, 2 * (x0 + t)))
    np.testing.assert_allclose(np.asarray(pattern_maps(tile, m, 3, (t, t), 2))[0], full[sl],
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(pattern_variance(tile, m, *v, 3, (t, t), 2))[0],
                               full_v[sl], rtol=1e-3, atol=1e-9)


def test_bad_frame_counts_are_rejected():
    with pytest.raises(ValueError, match="n_angles=4"):
        estimate_pattern(jnp.zeros((1, 9, 16, 16)), 4, CUTOFF)
    with pytest.raises(ValueError, match=">= 3 phases"):
        estimate_pattern(jnp.zeros((1, 6, 16, 16)), 3, CUTOFF)


# -- the network's parametric light pattern -----------------------------------------------------


def _tiny(**model):
    raw = tiny_raw()
    raw["model"] = {**raw["model"], **model}
    return parse_params(raw)


def test_parametric_network_pattern_heads_and_gradients(rng):
    import jax
    from flax import nnx

    from simuq_core.network.forward import build_model, estimate_patterns, predict

    p = _tiny()
    assert p.model.light_pattern.mode == "parametric"
    model = build_model(p.model, p.uq, 9, 0)
    assert model.lp_head is None and model.lp_logvar_head is None
    x = rng.random((2, 9, 16, 16)).astype(np.float32)
    run = nnx.jit(lambda m, xb: predict(m, xb, p.uq))  # (eager op-by-op dispatch is 2x slower)
    out = run(model, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out["light_pattern"]).mean(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["pattern_modulation"]),
                               p.model.light_pattern.modulation_init, rtol=1e-5)
    assert out["lp_var"].shape == out["light_pattern"].shape
    # Precomputed estimates (as training passes them) give the same prediction.
    pre = estimate_patterns(model, x, batch_size=1)
    from simuq_core.network.forward import batch_pattern
    again = predict(model, jnp.asarray(x), p.uq, batch_pattern({k: jnp.asarray(v)
                                                                for k, v in pre.items()}))
    # (eager and per-sample against jit and batched: float32 round-off through the network, 14
    # layers at the tiny size, and the variance propagation's FFTs, the largest reduction)
    n_fft = (out["emitter"].shape[-1] + out["psf"].shape[-1] - 1) ** 2
    assert_f32_close(again["var_rec"], out["var_rec"], n_fft, depth=2 * (2 * p.model.depth + 1)
                     + p.model.depth + 2 + 2)

    def loss(m):
        o = predict(m, jnp.asarray(x), p.uq)
        return ((o["rec"] - jnp.asarray(x)) ** 2).mean() + o["lp_var"].mean()

    grads = nnx.jit(nnx.grad(loss))(model)
    for name in ("modulation_head", "pattern_logvar_head", "pattern_hidden"):
        g = jax.tree.leaves(getattr(grads, name))
        assert any(float(jnp.abs(v).max()) > 0 for v in g), name


def test_free_pattern_ablation_and_disabled_lp_target(rng):
    from flax import nnx

    from simuq_core.network.forward import build_model, predict

    x = jnp.asarray(rng.random((1, 9, 16, 16)), jnp.float32)
    free = _tiny(light_pattern={"mode": "free"})
    model = build_model(free.model, free.uq, 9, 0)
    out = nnx.jit(lambda m, xb: predict(m, xb, free.uq))(model, x)
    assert model.pattern_hidden is None and "pattern_k" not in out and "lp_logvar" in out
    no_lp = _tiny()
    no_lp = no_lp.model_copy(update={"uq": no_lp.uq.model_copy(update={"targets": ["emitter"]})})
    out = nnx.jit(lambda m, xb: predict(m, xb, no_lp.uq))(build_model(no_lp.model, no_lp.uq, 9, 0), x)
    assert "pattern_k" in out and "lp_logvar" not in out and "pattern_logvar" not in out


def test_period_prior_window():
    from simuq_core.config import LightPatternParams

    lo, hi = LightPatternParams(period_lr=5.0, period_tolerance=0.25).k_range()
    assert lo == pytest.approx(0.16) and hi == pytest.approx(1 / 3.75)
    assert LightPatternParams(period_lr=None).k_range() == (0.08, 0.45)
