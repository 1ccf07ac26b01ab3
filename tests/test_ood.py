"""Out-of-distribution test splits: each shift changes what it claims, the splits load,
bad overrides are named, the default simulation is unchanged, the output folder is atomic."""

import json
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import j1

from simuq_core.config import ObjectParams, ParamsError, SimulateParams, parse_params
from simuq_core.optics.imaging import airy_psf, default_psf_size, gaussian_psf
from simuq_core.simulation import dataset as ds
from simuq_core.simulation import ood
from simuq_core.simulation import samples as sim
from stages import simulate_ood

# The base mirrors params.yaml's photon budget (log-uniform 20-200 photons) at a tiny crop.
SIMULATE = dict(n_samples=1, n_val=1, n_test=2, lr_h=16, lr_w=16, hr_factor=2,
                noise=dict(photons=200.0, photon_range=10.0))
N_OOD = 2


def _params(**ood_section):
    return parse_params({"simulate": SIMULATE, "ood": {"n_test": N_OOD, **ood_section}})


def _meta(root, name="000000"):
    with np.load(root / "test_meta" / f"{name}.npz") as meta:
        return {k: meta[k] for k in meta.files}


def _structure_photons(meta, noise) -> float:
    """Mean expected signal electrons over structure pixels (the definition of ``noise.photons``)."""
    signal = (meta["clean"] - noise.offset_adu) / noise.gain_adu_per_e - noise.background_photons
    return float(signal[signal > 0.2 * signal.max()].mean())


def _high_frequency_fraction(image: np.ndarray, cutoff: float = 0.125) -> float:
    """Share of the (Hann-windowed, mean-free) power above ``cutoff`` cycles/px; the window keeps
    the crop's edge discontinuity from leaking power to high frequencies."""
    window = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    power = np.abs(np.fft.fft2((image - image.mean()) * window)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]), indexing="ij")
    return float(power[np.hypot(fy, fx) > cutoff].sum() / power.sum())


def _airy_fwhm_nm(na: float, wavelength_nm: float) -> float:
    """FWHM of ``(2 J1(v)/v)²``, ``v = 2π NA r / λ``, solved independently of simuq's PSF code."""
    v_half = brentq(lambda v: (2 * j1(v) / v) ** 2 - 0.5, 0.5, 2.5)
    return 2 * v_half / (2 * math.pi) * wavelength_nm / na


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every default shift written once (2 samples each) beside an in-distribution test split."""
    root = tmp_path_factory.mktemp("ood")
    params = _params()
    manifest = ood.write_ood_splits(params, root / "ood", progress=False)
    ds.write_dataset(params.simulate, root / "ref", progress=False, sizes={"test": N_OOD})
    return params, manifest, root / "ood", root / "ref"


# ------------------------------------------------------------------------------------------------
# Each shift changes what it claims
# ------------------------------------------------------------------------------------------------


def test_psf_gaussian_stores_a_gaussian_1p3x_the_default_airy_fwhm(written):
    params, _, out, ref = written
    hr_nm = params.simulate.hr_pixel_nm
    got, airy = _meta(out / "psf_gaussian")["psf"], _meta(ref)["psf"]
    assert got.shape == airy.shape  # same kernel size: only the shape and width change
    np.testing.assert_allclose(got, gaussian_psf(got.shape[0], 251.0 / hr_nm), atol=1e-6)
    assert np.abs(got - airy).max() > 0.1 * airy.max()
    assert 251.0 / _airy_fwhm_nm(1.3, 488.0) == pytest.approx(1.3, abs=0.005)
    # The "all" shift: 1.3x the Airy FWHM of its own NA (1.1).
    assert 297.0 / _airy_fwhm_nm(1.1, 488.0) == pytest.approx(1.3, abs=0.005)


def test_psf_na_stores_the_airy_psf_of_na_1p1(written):
    params, _, out, ref = written
    hr_nm = params.simulate.hr_pixel_nm
    meta = _meta(out / "psf_na")
    assert float(meta["psf_na"]) == 1.1 and float(_meta(ref)["psf_na"]) == 1.3
    size = default_psf_size(1.1, 488.0, hr_nm)
    assert meta["psf"].shape == (size, size) and size > _meta(ref)["psf"].shape[0]
    np.testing.assert_allclose(meta["psf"], airy_psf(size, 1.1, 488.0, hr_nm), atol=1e-6)
    assert meta["psf"].max() < 0.9 * _meta(ref)["psf"].max()  # wider, so a lower peak


@pytest.mark.parametrize("shift", ["pattern", "all"])
def test_pattern_shift_stores_period_4_and_modulation_0p5(written, shift):
    _, _, out, ref = written
    for name in ("000000", "000001"):
        meta = _meta(out / shift, name)
        np.testing.assert_allclose(np.linalg.norm(meta["pattern_k"], axis=1), 1 / 4.0, rtol=1e-12)
        np.testing.assert_allclose(meta["pattern_modulation"], 0.5)
    np.testing.assert_allclose(np.linalg.norm(_meta(ref)["pattern_k"], axis=1), 1 / 5.0, rtol=1e-12)
    np.testing.assert_allclose(_meta(ref)["pattern_modulation"], 0.8)


@pytest.mark.parametrize("shift", ["photons_low", "all"])
def test_photons_low_is_10x_below_the_dimmest_training_level(written, shift):
    params, manifest, out, ref = written
    noise = SimulateParams.model_validate(manifest["shifts"][shift]["params"]).noise
    base = params.simulate.noise
    dimmest_training = base.photons / base.photon_range  # 20 photons
    for name in ("000000", "000001"):
        assert _structure_photons(_meta(out / shift, name), noise) == pytest.approx(
            dimmest_training / 10, rel=1e-3)
        # The in-distribution samples lie in the training range (their background, scaled with
        # the photons, is counted here: at most 5 photons more).
        no_background = base.model_copy(update={"background_photons": 0.0})
        ref_photons = _structure_photons(_meta(ref, name), no_background)
        assert dimmest_training <= ref_photons <= base.photons + base.background_photons


def test_objects_blobs_have_no_thin_structure(written):
    """Smooth blobs (σ ≥ 150 nm ≈ 4.8 HR px) keep < 1% of their power above 1/8 cycle per HR px;
    filaments (30 nm wide) put 18-76% there (measured over 16 samples: blobs ≤ 0.05%)."""
    _, _, out, ref = written
    blobs = ds.load_split(out / "objects_blobs", "test").emitter
    default = ds.load_split(ref, "test").emitter
    blob_hf = [_high_frequency_fraction(e) for e in blobs]
    default_hf = [_high_frequency_fraction(e) for e in default]
    assert max(blob_hf) < 0.01 < 0.1 < min(default_hf)


def test_objects_dense_covers_more_of_the_field_than_default(written):
    _, _, out, ref = written
    dense = ds.load_split(out / "objects_dense", "test").emitter
    default = ds.load_split(ref, "test").emitter
    # Share of HR pixels above 10% of the peak: dense 0.83-0.92, default 0.23-0.60 (16 samples).
    assert min((e > 0.1).mean() for e in dense) > 0.7 > max((e > 0.1).mean() for e in default)


def test_a_punctum_is_a_gaussian_dot_of_the_configured_width():
    """A puncta-only field with one dot is rank 1 (separable) with a Gaussian profile of σ."""
    sigma_nm, hr_nm = 60.0, 31.3
    cfg = ObjectParams(curves=(0, 0), tubes=(0, 0), rings=(0, 0), blobs=(0, 0), puncta=(1, 1),
                       puncta_sigma_nm=(sigma_nm, sigma_nm))
    for index in range(3):
        emitter = sim.render_objects(sim.sample_rng(0, "test", index), (48, 48), hr_nm, cfg)
        assert emitter.max() == pytest.approx(1.0)
        singular = np.linalg.svd(emitter, compute_uv=False)
        assert singular[1] < 1e-10 * singular[0]
        profile = emitter.max(axis=1)
        keep = profile > 1e-3
        curvature = np.polyfit(np.flatnonzero(keep), np.log(profile[keep]), 2)[0]
        assert -0.5 / curvature == pytest.approx((sigma_nm / hr_nm) ** 2, rel=1e-6)


def test_all_combines_every_shift(written):
    _, manifest, _, _ = written
    cfg = SimulateParams.model_validate(manifest["shifts"]["all"]["params"])
    assert (cfg.objects.curves, cfg.objects.puncta, cfg.objects.blob_sigma_nm) == (
        (12, 24), (150, 300), (150.0, 400.0))
    assert (cfg.psf.kind, cfg.psf.na, cfg.psf.gaussian_fwhm_nm) == ("gaussian", 1.1, 297.0)
    assert (cfg.period_lr, cfg.modulation, cfg.noise.photons) == (4.0, 0.5, 2.0)


# ------------------------------------------------------------------------------------------------
# Layout, seeds, manifest
# ------------------------------------------------------------------------------------------------


def test_every_split_loads_with_the_training_geometry(written):
    params, manifest, out, _ = written
    assert sorted(manifest["shifts"]) == sorted(params.ood.shifts) and len(manifest["shifts"]) == 7
    for name in params.ood.shifts:
        split = ds.load_split(out / name, "test")
        assert split.raw.shape == (N_OOD, 9, 16, 16) and split.emitter.shape == (N_OOD, 32, 32)
        assert split.light_pattern.shape == (N_OOD, 9, 32, 32) and split.psf is not None
        assert np.isfinite(split.raw).all() and (split.sigma > 0).all()
        info = json.loads((out / name / "dataset.json").read_text())
        assert info["counts"] == {"test": N_OOD}
        assert info["geometry"]["lr_shape"] == [16, 16] and info["geometry"]["hr_factor"] == 2
        assert sorted(p.name for p in (out / name).iterdir()) == [
            "dataset.json", "test", "test_gt", "test_meta"]
    on_disk = json.loads((out / "ood.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["seed"] == 1000 and on_disk["n_test"] == N_OOD
    for name, shift in on_disk["shifts"].items():
        assert SimulateParams.model_validate(shift["params"]) == ood.ood_simulate_params(params, name)


def test_shifts_draw_their_own_objects_and_seeds_follow_the_name(written):
    params, _, out, ref = written
    emitters = {name: ds.load_split(out / name, "test").emitter[0] for name in ("psf_na", "pattern")}
    emitters["ref"] = ds.load_split(ref, "test").emitter[0]
    names = list(emitters)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.array_equal(emitters[a], emitters[b]), (a, b)
    # Reordering or dropping shifts leaves a shift's seed (hence its samples) unchanged.
    reordered = _params(shifts={"psf_na": {"psf": {"na": 1.1}}, "x": {"modulation": 0.3}})
    assert ood.ood_simulate_params(reordered, "psf_na").seed == ood.ood_simulate_params(
        params, "psf_na").seed != ood.ood_simulate_params(reordered, "x").seed
    assert ood.ood_simulate_params(_params(seed=1001), "psf_na").seed != ood.shift_seed(1000, "psf_na")


def test_merge_override_is_recursive_and_pure():
    base = {"psf": {"na": 1.3, "kind": "airy"}, "modulation": 0.8}
    override = {"psf": {"na": 1.1}, "pattern_k_frac": None}
    assert ood.merge_override(base, override) == {
        "psf": {"na": 1.1, "kind": "airy"}, "modulation": 0.8, "pattern_k_frac": None}
    assert base == {"psf": {"na": 1.3, "kind": "airy"}, "modulation": 0.8}


def test_write_dataset_sizes_writes_only_the_named_splits(tmp_path):
    cfg = SimulateParams(**SIMULATE)
    manifest = ds.write_dataset(cfg, tmp_path / "d", progress=False, sizes={"test": 1})
    assert manifest["counts"] == {"test": 1}
    assert not (tmp_path / "d" / "train").exists()
    with pytest.raises(ValueError, match="unknown split"):
        ds.write_dataset(cfg, tmp_path / "e", progress=False, sizes={"tset": 1})


# ------------------------------------------------------------------------------------------------
# Bad overrides fail with the key named
# ------------------------------------------------------------------------------------------------


def test_unknown_and_invalid_override_keys_are_named():
    params = _params(shifts={"typo": {"psf": {"naa": 1.1}}, "bad": {"psf": {"na": 5.0}}})
    with pytest.raises(ParamsError, match=r"ood\.shifts\.typo\.psf\.naa: unknown key"):
        ood.ood_simulate_params(params, "typo")
    with pytest.raises(ParamsError) as err:
        ood.resolve_ood_shifts(params)
    assert "ood.shifts.typo.psf.naa" in str(err.value) and "ood.shifts.bad.psf.na" in str(err.value)
    with pytest.raises(ParamsError, match="no shift named 'nope'"):
        ood.ood_simulate_params(params, "nope")


@pytest.mark.parametrize("key", ["lr_h", "lr_w", "hr_factor", "n_angles", "n_phases", "seed", "n_test"])
def test_geometry_and_split_keys_are_refused_at_parse_time(key):
    with pytest.raises(ParamsError, match=rf"ood\.shifts\.s\.{key} cannot be shifted"):
        _params(shifts={"s": {key: 3}})


@pytest.mark.parametrize("name", ["../up", "a/b", ""])
def test_shift_names_must_be_folder_names(name):
    with pytest.raises(ParamsError, match="must be a folder name"):
        _params(shifts={name: {"modulation": 0.5}})


def test_stage_exits_naming_the_bad_key_and_writes_nothing(tmp_path):
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"simulate": SIMULATE, "ood": {"shifts": {
        "good": {"modulation": 0.5}, "bad": {"noise": {"photonz": 2.0}}}}}))
    with pytest.raises(SystemExit, match=r"ood\.shifts\.bad\.noise\.photonz"):
        simulate_ood.main(["--params", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert not (tmp_path / "out").exists()


def test_stage_writes_the_splits(tmp_path):
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"simulate": SIMULATE, "ood": {"n_test": 1, "shifts": {
        "psf_na": {"psf": {"na": 1.1}}}}}))
    simulate_ood.main(["--params", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert len(ds.load_split(tmp_path / "out" / "psf_na", "test")) == 1
    assert list(json.loads((tmp_path / "out" / "ood.json").read_text())["shifts"]) == ["psf_na"]


# ------------------------------------------------------------------------------------------------
# The default simulation is unchanged; the output folder is atomic
# ------------------------------------------------------------------------------------------------

# Recorded with the code of commit 0434953, before the puncta kind existed: the PCG64 state after
# drawing the objects (exact: counts every random draw) and the emitter's sum (float64).
_OBJECTS_BEFORE = {
    0: (209696790723543209544977640570582249759, 143.1207496007271),
    1: (119004691047981012204315514502832168665, 191.08528051595582),
    2: (187739975770035812780327654717439136162, 151.5620263337247),
}
# Same code, whole ``simulate_sample`` of the tiny config, test split: state after the sample
# (noise draws included) and the sum of the raw stack (float32 ADU, JAX forward model on CPU).
_SAMPLES_BEFORE = {
    0: (177068950055491946155095505089171174310, 754085.9624786377),
    1: (313165681977577695734653201612671498406, 888146.4602203369),
}


def test_default_objects_and_samples_are_those_before_the_new_kind():
    """Meaningful because the golden numbers predate the edit: any extra random draw moves the
    generator state, and any change to the rendering moves the sums. The negative control shows
    that the state check sees the draws of a puncta range that allows one dot."""
    hr_nm = 62.6 / 2
    for index, (state, total) in _OBJECTS_BEFORE.items():
        rng = sim.sample_rng(0, "train", index)
        emitter = sim.render_objects(rng, (32, 32), hr_nm, ObjectParams())
        assert rng.bit_generator.state["state"]["state"] == state
        assert emitter.sum() == pytest.approx(total, rel=1e-12)
        control = sim.sample_rng(0, "train", index)
        sim.render_objects(control, (32, 32), hr_nm, ObjectParams(puncta=(0, 1)))
        assert control.bit_generator.state["state"]["state"] != state
    cfg = SimulateParams(n_samples=3, n_val=1, n_test=1, lr_h=16, lr_w=16, hr_factor=2)
    for index, (state, total) in _SAMPLES_BEFORE.items():
        rng = sim.sample_rng(0, "test", index)
        sample = sim.simulate_sample(rng, cfg)
        assert rng.bit_generator.state["state"]["state"] == state
        assert sample.raw.astype(np.float64).sum() == pytest.approx(total, rel=1e-6)


def test_interrupted_run_keeps_the_previous_ood_folder(tmp_path, monkeypatch):
    params = _params(n_test=1, shifts={"a": {"modulation": 0.5}, "b": {"modulation": 0.6}})
    out = tmp_path / "ood"
    ood.write_ood_splits(params, out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real, calls = ds.simulate_sample, {"n": 0}

    def flaky(rng, cfg):
        calls["n"] += 1
        if calls["n"] == 2:  # the second shift's first sample
            raise KeyboardInterrupt
        return real(rng, cfg)

    monkeypatch.setattr(ds, "simulate_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        ood.write_ood_splits(_params(n_test=1, seed=7, shifts={"a": {}, "b": {}}), out, progress=False)
    assert calls["n"] == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ood"]  # no half-written temp folder left
