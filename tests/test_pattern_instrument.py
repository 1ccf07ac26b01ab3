"""The instrument's pattern (simuq_core/pattern/instrument.py): phases of a dim stack fitted at the
wave vectors of a bright one of the same session, and the session's wave vectors pooled with a
disagreeing file named."""

from __future__ import annotations

import numpy as np
import pytest

from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.pattern.blind import airy_camera_otf, estimate_pattern_blind
from simuq_core.pattern.instrument import SessionEstimate, fit_pattern_phases, pool_wave_vectors

CUTOFF = otf_cutoff_cycles_per_px(1.3, 488.0, 62.6)
PERIOD, SIZE = 4.0, 96


def _session(photons: float, seed: int, phases: np.ndarray, base: float = 0.3
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(9, SIZE, SIZE)`` Poisson frames of one sample under the pattern of wave vectors
    ``k`` (3 angles 60° apart, period PERIOD) and first phases ``phases``; returns (frames, k)."""
    rng = np.random.default_rng(seed)
    otf = airy_camera_otf(CUTOFF)(np.fft.fftfreq(SIZE)[:, None], np.fft.fftfreq(SIZE)[None, :])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    sample = (np.random.default_rng(0).random((SIZE, SIZE)) < 0.03) * 1.0 + 0.05
    ks, frames = [], []
    for a in range(3):
        ang = base + a * np.pi / 3
        k = np.array([np.sin(ang), np.cos(ang)]) / PERIOD
        ks.append(k)
        for p in range(3):
            theta = 2 * np.pi * (k[0] * yy + k[1] * xx) + phases[a] + 2 * np.pi * p / 3
            lit = sample * (1 + 0.8 * np.cos(theta))
            frames.append(np.real(np.fft.ifft2(np.fft.fft2(lit) * otf)))
    clean = np.clip(np.asarray(frames), 0, None)
    return rng.poisson(photons * clean / clean.max()).astype(np.float64) + 100.0, np.asarray(ks)


def _wrapped(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b)))))


def test_dim_stack_phases_fitted_at_the_bright_stacks_wave_vectors():
    """0.7 photons at the brightest pixel: the dim stack's own blind search places wave vectors
    wrong, while its phases at the bright stack's wave vectors agree with the bright stack's."""
    phases = np.array([0.4, 2.0, -1.3])
    bright, k_true = _session(3000.0, 1, phases)
    dim, _ = _session(0.7, 2, phases)
    blind_bright = estimate_pattern_blind(bright, 3, CUTOFF)
    assert not blind_bright.weak.any()
    blind_dim = estimate_pattern_blind(dim, 3, CUTOFF)
    assert (np.hypot(*(np.asarray(blind_dim.estimate.k[0]) - k_true).T) / np.hypot(*k_true.T)).max() > 0.05
    k_bright = np.asarray(blind_bright.estimate.k[0], np.float64)
    fit = fit_pattern_phases(dim, k_bright, CUTOFF)
    np.testing.assert_allclose(np.asarray(fit.estimate.k[0]), k_bright, rtol=1e-6)  # k as given
    found = fit.quality > fit.threshold
    assert found.sum() >= 2, fit.quality
    # the same phases as the bright stack's own (one pattern, two photon levels); a phase of
    # detection z ≈ 3 scatters by ≈ 1/z rad
    error = _wrapped(np.asarray(fit.estimate.phase[0]), np.asarray(blind_bright.estimate.phase[0]))
    assert error[found].max() < 0.3, error


def test_a_phase_fit_on_pure_noise_is_not_detected():
    noise = np.random.default_rng(5).poisson(50.0, (9, SIZE, SIZE)).astype(np.float64)
    _, k_true = _session(10.0, 3, np.zeros(3))
    fit = fit_pattern_phases(noise, k_true, CUTOFF)
    # 1 % false alarm per angle at a known location: 3 angles all below is the ~97 % case
    assert (fit.quality < fit.threshold).sum() >= 2 and fit.messages


def test_session_wave_vectors_pooled_and_a_disagreeing_file_named():
    rng = np.random.default_rng(0)
    k = np.array([[0.2, 0.1], [-0.05, 0.22], [0.25, -0.12]])
    files = [SessionEstimate(f"f{i}.tif", k + rng.normal(0, 2e-4, k.shape), np.full(3, 20.0), True, 256)
             for i in range(4)]
    off = k.copy()
    off[1] *= 1.03  # one angle 3 % off in one file
    files.append(SessionEstimate("odd.tif", off, np.full(3, 20.0), True, 256))
    files.append(SessionEstimate("dim.tif", k * 1.2, np.full(3, 2.0), False, 256))  # not clear: unused
    files.append(SessionEstimate("flipped.tif", -k, np.full(3, 20.0), True, 256))  # ±k: one direction
    pooled = pool_wave_vectors(files)
    assert pooled is not None and "dim.tif" not in pooled.sources and len(pooled.sources) == 6
    assert len(pooled.disagreements) == 1 and pooled.disagreements[0].startswith("odd.tif: angle 1")
    assert np.hypot(*(pooled.k - k).T).max() < 0.004 * np.hypot(*k.T).min()
    assert pool_wave_vectors(files[5:6]) is None
    again = type(pooled).from_dict(pooled.as_dict())
    np.testing.assert_allclose(again.k, pooled.k, atol=1e-6)


def test_index_gives_a_dim_file_the_sessions_wave_vectors(tmp_path):
    """Indexing a bright and a dim acquisition of one session: the dim one's blind estimate is
    unreliable, so it trains with the bright one's wave vectors and its own phases; the index
    records the instrument's pattern."""
    import tifffile

    from simuq_core.realdata.crops import index_acquisitions

    phases = np.array([0.4, 2.0, -1.3])
    paths = []
    for name, photons, seed in (("bright.tif", 3000.0, 1), ("dim.tif", 0.7, 2)):
        frames, _ = _session(photons, seed, phases)
        tifffile.imwrite(tmp_path / name, frames.astype(np.uint16))
        paths.append(tmp_path / name)
    index = index_acquisitions(paths, tmp_path / "cache", na=1.3, wavelength_nm=488.0, default_pixel_nm=62.6,
                               norm_offset=100.0)
    bright, dim = index.acquisitions
    assert bright.pattern.get("source") is None and dim.pattern["source"] == "instrument"
    np.testing.assert_allclose(dim.pattern_k[0], bright.pattern_k[0], atol=1e-6)
    assert index.instrument is not None and index.instrument["sources"] == [str(paths[0])]
    assert "weak or irregular" in dim.warnings[-1]
    error = _wrapped(np.asarray(dim.pattern_phase[0]), np.asarray(bright.pattern_phase[0]))
    found = np.asarray(dim.pattern["quality_z"]) > dim.pattern["threshold_z"]
    assert found.sum() >= 2 and error[found].max() < 0.3


def test_an_angle_off_the_geometry_is_searched_again_where_the_others_put_it():
    """Angle 1 also carries a stronger spurious modulation at another period and orientation (a
    second reflection): the first search takes it; the other two angles fix a regular geometry,
    and the second search near it finds the true, weaker pattern."""
    phases = np.array([0.4, 2.0, -1.3])
    frames, k_true = _session(3000.0, 1, phases)
    rng = np.random.default_rng(4)
    otf = airy_camera_otf(CUTOFF)(np.fft.fftfreq(SIZE)[:, None], np.fft.fftfreq(SIZE)[None, :])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    spurious = np.array([np.sin(0.77), np.cos(0.77)]) / 3.3
    sample = (np.random.default_rng(0).random((SIZE, SIZE)) < 0.03) * 1.0 + 0.05
    clean = frames.copy()
    for p in range(3):
        theta = 2 * np.pi * (spurious[0] * yy + spurious[1] * xx) + 2 * np.pi * p / 3
        extra = np.real(np.fft.ifft2(np.fft.fft2(sample * 2.0 * np.cos(theta)) * otf))
        clean[3 + p] += rng.poisson(np.clip(3000.0 * extra / np.abs(extra).max() + 3000.0, 0, None)) - 3000.0
    est = estimate_pattern_blind(clean, 3, CUTOFF)
    k = np.asarray(est.estimate.k[0], np.float64)
    err = np.hypot(*(k - k_true).T) / np.hypot(*k_true.T)
    assert err.max() < 0.01, (err, est.messages)
    assert any("angle 1 broke the geometry" in m and "kept the peak found there" in m for m in est.messages)


def test_fine_tuning_leaves_out_a_file_whose_pattern_is_detected_nowhere(tmp_path):
    """A pure-noise stack beside a bright one: its phase fit at the session's wave vectors fails
    at every angle, so it is left out of fine-tuning with the reason; alone, nothing is left."""
    import tifffile

    from simuq_core.realdata.checks import InputError
    from simuq_core.realdata.crops import index_acquisitions, without_unknown_patterns

    bright, _ = _session(3000.0, 1, np.array([0.4, 2.0, -1.3]))
    tifffile.imwrite(tmp_path / "bright.tif", bright.astype(np.uint16))
    # (the blind search's false alarms are 1 % per angle: this draw has none, as ~97 % of draws)
    noise = np.random.default_rng(6).poisson(50.0, (9, SIZE, SIZE)) + 100
    tifffile.imwrite(tmp_path / "noise.tif", noise.astype(np.uint16))
    kw = {"na": 1.3, "wavelength_nm": 488.0, "default_pixel_nm": 62.6, "norm_offset": 100.0}
    index = index_acquisitions([tmp_path / "bright.tif", tmp_path / "noise.tif"], tmp_path / "cache", **kw)
    kept = without_unknown_patterns(index)
    assert [a.path for a in kept.acquisitions] == [str(tmp_path / "bright.tif")]
    assert "detected at no angle" in kept.skipped[-1][1] and "noise.tif" in kept.skipped[-1][1]
    alone = index_acquisitions([tmp_path / "noise.tif"], tmp_path / "cache", **kw)
    with pytest.raises(InputError, match="no acquisition with a detectable pattern"):
        without_unknown_patterns(alone)


def test_unknown_phases_are_marginalised_as_a_uniform_mixture():
    """predict with phases not detected: the draws' means are averaged and their spread enters
    the std (mixture variance = mean variance + variance of the means); detected angles keep
    their fitted phases."""
    from simuq_core.inference.files import phase_marginalised
    from simuq_core.pattern.estimate import PatternEstimate

    seen = []

    def fake_predictor(x, desc, pattern):
        est, _ = pattern
        phase = np.asarray(est.phase)
        seen.append(phase.copy())
        level = float(np.cos(phase[..., 1]).sum())  # the map depends on angle 1's phase
        return {"emitter": np.full((4, 4), level), "emitter_std": np.full((4, 4), 0.5)}, {"tiles": 1}

    est = PatternEstimate(np.zeros((1, 3, 2)), np.array([[0.1, 0.2, 0.3]]), np.ones((1, 3)), np.zeros((1, 2)))
    maps, tiling = phase_marginalised(fake_predictor, np.zeros((9, 2, 2)), "x", (est, (1.0, 1.0)),
                                      np.array([1]), draws=50, seed=0)
    phases = np.asarray(seen)[:, 0]
    np.testing.assert_allclose(phases[:, [0, 2]], np.tile([0.1, 0.3], (50, 1)), rtol=1e-6)
    levels = np.cos(phases[:, 1])
    assert levels.std() > 0.3  # the unknown phase was drawn, not kept
    np.testing.assert_allclose(maps["emitter"], levels.mean(), rtol=1e-5)
    np.testing.assert_allclose(maps["emitter_std"], np.sqrt(0.25 + levels.var()), rtol=1e-5)
    assert tiling["phase_draws"] == 50 and tiling["phase_marginalised_angles"] == [1]


def test_pattern_figure_of_an_estimate(tmp_path):
    """pattern.png: one panel per angle from the frames and the estimate as summary.json records it."""
    from simuq_core.reports.pattern import plot_pattern

    frames, k = _session(300.0, 1, np.array([0.4, 2.0, -1.3]))
    est = estimate_pattern_blind(frames, 3, CUTOFF)
    record = est.as_dict()
    assert np.allclose(record["k_cycles_per_px"], np.asarray(est.estimate.k[0]), atol=1e-6)
    path = plot_pattern(tmp_path / "pattern.png", frames, record, CUTOFF, "pattern found", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
