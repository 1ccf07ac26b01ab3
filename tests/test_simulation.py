"""Synthetic data: noise ground truth, determinism, layout, atomic writes (docs/design.md §4.6, §7)."""

import numpy as np
import pytest
import tifffile

from simuq_core.config import SimulateParams
from simuq_core.simulation import dataset as ds
from simuq_core.simulation import samples as sim

TINY = dict(n_samples=3, n_val=1, n_test=1, lr_h=16, lr_w=16, hr_factor=2)


def _cfg(**overrides) -> SimulateParams:
    return SimulateParams(**{**TINY, **overrides})


def test_sample_shapes_units_and_ground_truth():
    cfg = _cfg()
    s = sim.simulate_sample(sim.sample_rng(0, "train", 0), cfg)
    assert s.raw.shape == s.clean.shape == s.sigma.shape == (9, 16, 16)
    assert s.emitter.shape == (32, 32) and s.light_pattern.shape == (9, 32, 32)
    assert s.raw.dtype == np.float32
    assert s.emitter.min() >= 0 and s.emitter.max() == pytest.approx(1.0)
    np.testing.assert_allclose(s.light_pattern.mean(axis=0), 1.0, atol=1e-5)
    assert s.psf.sum() == pytest.approx(1.0, abs=1e-5)
    # The photon budget: mean expected count on structure equals noise.photons (+ background).
    expected_e = (s.clean - cfg.noise.offset_adu) / cfg.noise.gain_adu_per_e
    signal = expected_e - cfg.noise.background_photons
    structure = signal > 0.2 * signal.max()
    assert signal[structure].mean() == pytest.approx(cfg.noise.photons, rel=1e-3)


def test_stored_sigma_is_the_exact_noise_std():
    """Empirical std of (noisy - clean) over many draws matches the stored σ map.

    N = 4000 draws per pixel: the relative standard error of a sample std is ≈ 1/sqrt(2N) = 1.1%
    (a little more for Poisson at low counts), so every one of the 2304 pixels lies within 5%
    (> 4 SE) and the pixel-averaged ratio within 0.5%.
    """
    cfg = _cfg(noise=dict(photons=30.0, background_photons=2.0, hetero_noise_e=15.0))
    rng = np.random.default_rng(7)
    s = sim.simulate_sample(rng, cfg)
    expected_e = (s.clean.astype(np.float64) - cfg.noise.offset_adu) / cfg.noise.gain_adu_per_e
    n = 4000
    draws = sim.add_noise(rng, np.broadcast_to(expected_e, (n, *expected_e.shape)),
                          s.noise_mask.astype(np.float64), cfg.noise)
    emp = (draws - s.clean).std(axis=0, ddof=1)
    ratio = emp / s.sigma
    assert np.abs(ratio - 1).max() < 0.05
    assert ratio.mean() == pytest.approx(1.0, abs=0.005)
    # The noise is heteroscedastic (Poisson + mask) and not clipped at the offset.
    assert s.sigma.max() / s.sigma.min() > 2
    assert (draws < cfg.noise.offset_adu).any()


def test_photon_range_draws_each_sample_budget_log_uniformly():
    """With ``photon_range = 10`` the structure photons of a sample lie in [photons/10, photons]
    and differ between samples; the objects are those of the same seed without a range."""
    cfg = _cfg(noise=dict(photons=200.0, photon_range=10.0))
    got = []
    for i in range(6):
        s = sim.simulate_sample(sim.sample_rng(0, "train", i), cfg)
        expected_e = (s.clean - cfg.noise.offset_adu) / cfg.noise.gain_adu_per_e
        structure = expected_e > 0.2 * expected_e.max()
        got.append(expected_e[structure].mean())
        plain = sim.simulate_sample(sim.sample_rng(0, "train", i), _cfg())
        np.testing.assert_array_equal(s.emitter, plain.emitter)
    assert min(got) >= 20.0 * 0.99 and max(got) <= 205.0 * 1.01
    assert max(got) / min(got) > 1.5


def test_noise_twin_is_an_independent_realisation_of_the_same_sample():
    """Twin − clean has the stored σ (z² mean 1 within 5 SE of √(2/n)) and is uncorrelated with the
    first realisation's noise (|corr| < 5/√n)."""
    cfg = _cfg(lr_h=32, lr_w=32)
    s = sim.simulate_sample(sim.sample_rng(0, "test", 0), cfg)
    twin = sim.noise_twin(np.random.default_rng(1), s, cfg.noise)
    assert twin.shape == s.raw.shape and twin.dtype == np.float32
    n = twin.size
    z = (twin - s.clean) / s.sigma
    assert np.mean(z**2) == pytest.approx(1.0, abs=5 * np.sqrt(2.0 / n))
    corr = np.corrcoef((twin - s.clean).ravel(), (s.raw - s.clean).ravel())[0, 1]
    assert abs(corr) < 5 / np.sqrt(n)


def test_normalised_sigma_matches_normalised_residual(tmp_path):
    cfg = _cfg()
    ds.write_dataset(cfg, tmp_path / "sim", progress=False)
    split = ds.load_split(tmp_path / "sim", "train")
    assert split.raw.shape == (3, 9, 16, 16) and split.emitter.shape == (3, 32, 32)
    # Residual of the stored stack in loader units, standardised by the loader-unit σ: unit scale.
    z = (split.raw - split.clean) / split.sigma
    assert z.std() == pytest.approx(1.0, abs=4 * np.sqrt(2 / z.size) + 0.02)
    assert abs(z.mean()) < 5 / np.sqrt(z.size)


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    cfg = _cfg()
    a = ds.write_dataset(cfg, tmp_path / "a", progress=False)
    b = ds.write_dataset(cfg, tmp_path / "b", progress=False)
    c = ds.write_dataset(_cfg(seed=1), tmp_path / "c", progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 * 4 + 1
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert a["content_sha256"] == b["content_sha256"] != c["content_sha256"]


def test_layout_tiffs_open_with_imagej_axes(tmp_path):
    cfg = _cfg()
    manifest = ds.write_dataset(cfg, tmp_path / "sim", progress=False)
    root = tmp_path / "sim"
    assert manifest["counts"] == {"train": 3, "val": 1, "test": 1}
    assert (root / "dataset.json").exists()
    for split, n in manifest["counts"].items():
        assert len(list((root / split).glob("*.tif"))) == n
        assert len(list((root / f"{split}_gt").glob("*_lp.tif"))) == n
        assert len(list((root / f"{split}_meta").glob("*.npz"))) == n
    with tifffile.TiffFile(root / "train" / "000000.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        assert tif.series[0].shape == (9, 16, 16) and tif.series[0].dtype == np.float32
    with tifffile.TiffFile(root / "train_gt" / "000000_lp.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == (9, 32, 32)
    with np.load(root / "train_meta" / "000000.npz") as meta:
        assert meta["noise_sigma"].shape == (9, 16, 16)
        assert meta["pattern_k"].shape == (9, 2) and meta["pattern_phase"].shape == (9,)
        assert float(meta["norm_scale"]) > 0


def test_interrupted_run_keeps_previous_dataset(tmp_path, monkeypatch):
    out = tmp_path / "sim"
    ds.write_dataset(_cfg(), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real = ds.simulate_sample

    def flaky(rng, cfg):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(rng, cfg)

    monkeypatch.setattr(ds, "simulate_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        ds.write_dataset(_cfg(seed=5), out, progress=False)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["sim"]  # no half-written temp folder left


def test_load_split_names_missing_metadata(tmp_path):
    ds.write_dataset(_cfg(), tmp_path / "sim", progress=False)
    (tmp_path / "sim" / "train_meta" / "000001.npz").unlink()
    with pytest.raises(FileNotFoundError, match="000001.npz"):
        ds.load_split(tmp_path / "sim", "train")
    with pytest.raises(FileNotFoundError, match="no .tif"):
        ds.load_split(tmp_path / "sim", "nosuchsplit")


def test_objects_mixture_is_configurable():
    rng = np.random.default_rng(3)
    only_blobs = _cfg(objects=dict(curves=[0, 0], tubes=[0, 0], rings=[0, 0], blobs=[3, 3]))
    e = sim.render_objects(rng, (64, 64), 31.3, only_blobs.objects)
    # Blobs only: smooth, no thin lines -> small Laplacian relative to a filament field.
    lines = _cfg(objects=dict(curves=[4, 4], tubes=[0, 0], rings=[0, 0], blobs=[0, 0]))
    f = sim.render_objects(np.random.default_rng(3), (64, 64), 31.3, lines.objects)

    def roughness(img):
        return np.abs(np.diff(img, 2, axis=0)).mean() / img.mean()

    assert roughness(f) > 3 * roughness(e)
