"""Measuring raw stacks for matched simulation (simuq_core/realdata/measure.py, stages/measure.py).

Tolerances come from the spread of the estimates over 16 seeds per setting (64² px, background
10 e-, read noise 3 e-, gain 2, offset 100; recorded when the module was written):

- gain: the fit's own standard error (16-seed spread 0.04-0.06 against reported 0.035-0.072), so
  ``|ĝ − g| < 4·SE``;
- photons: mean bias +7 % at 50 photons (the noisy maximum lifts the 0.2 × max threshold), +2 % at
  500, plus the gain's error (photons ∝ 1/ĝ): ``|rel. error| < bias + 4·SE/ĝ``;
- background: 16-seed standard deviation 0.26-0.36 e-: 1.5 e- is > 4σ;
- read noise: standard deviation 0.17-0.26 e-: 1 e- is ~4σ;
- period: median over angles, standard deviation 0.16 % (500 photons) and 0.25 % (50): 1 % / 1.5 %;
- modulation: bias −2.5 %, standard deviation 0.013-0.014: 0.04 (500 photons), 0.06 (50).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from simuq_core.config import SimulateParams, apply_microscope, merge_override
from simuq_core.realdata.checks import InputError
from simuq_core.realdata.measure import measure_acquisition, measure_files, simulate_override
from simuq_core.realdata.photon_transfer import photon_transfer
from simuq_core.realdata.reader import read_acquisition
from simuq_core.simulation.samples import simulate_sample
from tests._tiny import tiny_params_file

ROOT = Path(__file__).resolve().parents[1]
MT = ROOT / "examples" / "rdl_sim_microtubules" / "MT.mrc"
OPTICS = {"na": 1.3, "wavelength_nm": 488.0, "pixel_nm": 62.6}  # SimulateParams' default PSF
BACKGROUND, READ, GAIN, OFFSET = 10.0, 3.0, 2.0, 100.0


def _stack(photons: float, period: float, modulation: float, seed: int):
    cfg = SimulateParams.model_validate({
        "n_samples": 1, "n_val": 1, "n_test": 1, "lr_h": 64, "lr_w": 64, "hr_factor": 2,
        "pattern_period_lr": period, "modulation": modulation,
        "noise": {"photons": photons, "background_photons": BACKGROUND, "read_noise_e": READ,
                  "hetero_noise_e": 0.0, "gain_adu_per_e": GAIN, "offset_adu": OFFSET}})
    return simulate_sample(np.random.default_rng(seed), cfg).raw


def _gain_se(m: dict) -> float:
    se = np.asarray(m["photon_transfer"]["gain_se"])
    return float(1.0 / np.sqrt((1.0 / se**2).sum()))  # the inverse-variance combination's error


CASES = [  # photons, period, modulation, photon bias bound, period tol, modulation tol
    (50.0, 5.0, 0.5, 0.08, 0.015, 0.06),
    (500.0, 3.5, 0.9, 0.03, 0.01, 0.04),
]


@pytest.fixture(scope="module", params=CASES, ids=["50ph", "500ph"])
def measured(request):
    photons, period, modulation, *tol = request.param
    raw = _stack(photons, period, modulation, seed=1)
    return request.param, raw, measure_acquisition(raw, **OPTICS, n_angles=3, offset=OFFSET)


def test_recovers_the_simulated_camera_and_sample(measured):
    (photons, period, modulation, photon_bias, period_tol, mod_tol), _, m = measured
    se = _gain_se(m)
    assert abs(m["gain_adu_per_e"] - GAIN) < 4 * se
    assert abs(m["photons"] / photons - 1.0) < photon_bias + 4 * se / m["gain_adu_per_e"]
    assert abs(m["background_photons"] - BACKGROUND) < 1.5
    assert abs(m["read_noise_e"] - READ) < 1.0
    assert m["pattern"]["weak"] == []
    assert np.allclose(m["pattern"]["period_px"], period, rtol=period_tol)
    assert abs(np.median(m["pattern"]["modulation"]) - modulation) < mod_tol
    assert m["warnings"] == []
    json.dumps(m, allow_nan=False)  # JSON-safe: no NaN, no NumPy types


def test_unknown_offset_moves_electrons_between_background_and_read_noise_only(measured):
    """Offset from the intercept with read noise 0: photons unchanged (exactly), background
    + read² unchanged, offset = true − g·r² within its error."""
    _, raw, given = measured
    m = measure_acquisition(raw, **OPTICS, n_angles=3, offset=None)
    assert m["photons"] == pytest.approx(given["photons"], rel=1e-5)
    assert m["read_noise_e"] == 0.0
    assert m["dark_variance_e2"] == pytest.approx(given["dark_variance_e2"], rel=1e-5)
    offset_se = max(m["photon_transfer"]["offset_se"])
    assert abs(m["offset_adu"] - (OFFSET - GAIN * READ**2)) < 4 * offset_se


def test_photon_numbers_survive_rescaling_the_file(measured):
    """A file rescaled after acquisition (x → a·x + b): the gain scales by a, photons do not move."""
    _, raw, _ = measured
    m = measure_acquisition(raw, **OPTICS, n_angles=3, offset=None)
    r = measure_acquisition(37.0 * raw + 5000.0, **OPTICS, n_angles=3, offset=None)
    assert r["gain_adu_per_e"] == pytest.approx(37.0 * m["gain_adu_per_e"], rel=1e-5)
    for key in ("photons", "background_photons"):
        assert r[key] == pytest.approx(m[key], rel=1e-5)


def test_photon_transfer_line_on_pure_noise(rng):
    """Flat-field frames of known gain / read noise at several levels: the fitted line is exact
    within 4 of its own standard errors, and the reduced chi² is ~1 (16 frames of 64² px)."""
    levels = np.repeat(np.array([20.0, 80.0, 320.0, 1280.0]), 4)[:, None, None]
    ramp = np.linspace(0.5, 1.5, 64)[None, None, :]  # smooth, so inside the optics' band
    lam = levels * ramp * np.ones((16, 64, 64))
    frames = 1.5 * (rng.poisson(lam) + 4.0 * rng.standard_normal(lam.shape)) + 300.0
    pt = photon_transfer(frames, otf_cutoff=0.3)
    assert abs(pt.gain - 1.5) < 4 * pt.gain_se
    assert abs(pt.intercept - (1.5**2 * 16.0 - 1.5 * 300.0)) < 4 * pt.intercept_se
    # reduced chi² of 16 × 49 blocks: its own sampling spread is ~sqrt(2/784) = 0.05
    assert 0.7 < pt.reduced_chi2 < 1.3
    assert abs(pt.whiteness - 1.0) < 0.1


def test_clipped_stack_is_flagged(measured):
    _, raw, _ = measured
    clipped = np.minimum(raw, np.percentile(raw, 99.0))
    m = measure_acquisition(clipped, **OPTICS, n_angles=3, offset=OFFSET)
    assert m["clipped_fraction"] > 0.005
    assert any("clipped" in w for w in m["warnings"])


# -- the override ---------------------------------------------------------------------------------


def _real_simulate_section() -> dict:
    raw = yaml.safe_load((ROOT / "pipelines" / "real" / "params.yaml").read_text())
    return apply_microscope(raw)["simulate"]


def test_override_validates_and_round_trips(measured):
    _, _, m = measured
    other = json.loads(json.dumps(m))
    other["pattern"]["period_px"] = [p * 1.1 for p in other["pattern"]["period_px"]]
    other["photons_tiles"] = [v / 4.0 for v in other["photons_tiles"]]
    one, two = simulate_override([m]), simulate_override([m, other])
    assert one["period_jitter"] == 0.0 and one["noise"]["photon_range"] == 1.0  # one 64² tile
    # Two files: the jitter covers both periods, the range both photon levels.
    assert two["period_jitter"] == pytest.approx(0.05 / 1.05, rel=1e-3)
    lo, hi = np.quantile([m["photons_tiles"][0], m["photons_tiles"][0] / 4.0], [0.1, 0.9])
    assert two["noise"]["photon_range"] == pytest.approx(hi / lo, rel=1e-3)  # 10th-90th percentile
    base_yaml = yaml.safe_load((ROOT / "params.yaml").read_text())["simulate"]
    for base in (_real_simulate_section(), base_yaml):
        for override in (one, two):
            override = json.loads(json.dumps(override, allow_nan=False))
            cfg = SimulateParams.model_validate(merge_override(base, override))
            assert cfg.period_lr == pytest.approx(override["pattern_period_lr"])
            assert cfg.modulation == override["modulation"]
            dumped = cfg.model_dump(mode="json")
            assert {k: dumped["noise"][k] for k in override["noise"]} == override["noise"]


def test_override_refuses_empty_input():
    with pytest.raises(ValueError, match="no measurement"):
        simulate_override([])


# -- the shipped real stack ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mt() -> dict:
    acq = read_acquisition(MT)
    return measure_acquisition(acq.frames, na=1.47, wavelength_nm=525.0, pixel_nm=62.6, n_angles=3,
                               offset=None)


def test_real_stack(mt):
    assert mt["pattern"]["weak"] == []
    assert np.allclose(mt["pattern"]["period_px"], 2.87, rtol=0.01)
    for key in ("photons", "background_photons", "gain_adu_per_e"):
        assert np.isfinite(mt[key]) and mt[key] > 0
    # White noise beyond the cut-off and a line that explains it (per angle: MT.mrc was rescaled
    # angle by angle, which the warning says).
    assert abs(mt["photon_transfer"]["whiteness"] - 1.0) < 0.15
    assert mt["photon_transfer"]["reduced_chi2"] < 1.5
    assert any("angle by angle" in w for w in mt["warnings"])
    override = simulate_override([mt])
    cfg = SimulateParams.model_validate(merge_override(_real_simulate_section(), override))
    assert cfg.period_lr == pytest.approx(2.87, rel=0.01)


# -- files and the command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("measure")
    tifffile.imwrite(folder / "good.tif", _stack(200.0, 4.0, 0.8, seed=2))
    (folder / "bad.tif").write_bytes(b"not a tiff at all")
    return folder


def test_bad_file_is_skipped_with_its_name(files):
    good, bad = files / "good.tif", files / "bad.tif"
    result = measure_files([bad, good], **OPTICS, offset=OFFSET)
    assert [f["path"] for f in result["files"]] == [str(good)]
    assert len(result["skipped"]) == 1 and str(bad) in result["skipped"][0]["reason"]
    # the session's wave vectors: the one clear file's own
    inst = result["instrument_pattern"]
    assert inst["sources"] == [str(good)] and inst["pixel_nm"] == pytest.approx(62.6)
    np.testing.assert_allclose(inst["k_cycles_per_px"], result["files"][0]["pattern"]["k_cycles_per_px"],
                               atol=1e-6)
    with pytest.raises(InputError, match="bad.tif"):
        measure_files([bad], **OPTICS)


def test_command(files, tmp_path, capsys):
    from stages.measure import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "microscope": {"na": 1.3, "emission_nm": 488.0, "pixel_nm": 62.6, "camera_offset_adu": OFFSET},
        "finetune": {"inputs": [str(files / "*.tif")]}}))
    out = tmp_path / "measured.json"
    assert main(["--params", str(params), "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["files"][0]["offset_source"].startswith("given")
    assert len(result["skipped"]) == 1
    assert "bad.tif" in capsys.readouterr().out
    assert not list(tmp_path.glob(".measured.json.*"))  # written via a temporary name, renamed
    params.write_text(yaml.safe_dump({"finetune": {"inputz": []}}))
    assert main(["--params", str(params), "--out", str(out)]) == 2
    assert "finetune.inputz" in capsys.readouterr().err
    params.write_text(yaml.safe_dump({"finetune": {"inputs": [str(files / "bad.tif")]}}))
    assert main(["--params", str(params), "--out", str(tmp_path / "none.json")]) == 2
    assert "bad.tif" in capsys.readouterr().err


def test_simulate_stage_matches_a_measurement(measured, tmp_path):
    """``python -m stages.simulate --match measured.json``: the data are simulated at the measured
    pattern and photon level (the manifest records the merged section); a file without an
    override is refused by name."""
    from stages.simulate import main as simulate_main

    (photons, period, *_), _, m = measured
    path = tmp_path / "measured.json"
    path.write_text(json.dumps({"override": simulate_override([m])}))
    params = Path(tiny_params_file())
    simulate_main(["--params", str(params), "--out", str(tmp_path / "sim"), "--match", str(path), "--quiet"])
    manifest = json.loads((tmp_path / "sim" / "dataset.json").read_text())
    sim = manifest["params"]
    assert sim["pattern_period_lr"] == pytest.approx(period, rel=0.015)
    assert sim["noise"]["photons"] == pytest.approx(simulate_override([m])["noise"]["photons"])
    assert sim["lr_h"] == yaml.safe_load(params.read_text())["simulate"]["lr_h"]  # geometry kept
    (tmp_path / "bad.json").write_text(json.dumps({"files": []}))
    with pytest.raises(SystemExit, match="bad.json"):
        simulate_main(["--params", str(params), "--out", str(tmp_path / "sim2"), "--match",
                       str(tmp_path / "bad.json")])
    assert not (tmp_path / "sim2").exists()


@pytest.mark.parametrize("kind", ["ome_series", "imagej_offset"])
def test_one_file_reads_alike_in_predict_finetune_and_measure(tmp_path, kind):
    """The one reader: the same file gives predict, fine-tuning and measure the same axes, time
    points, frames, pixel size and camera offset (an OME-TIFF time series with PhysicalSizeX and
    no offset; a single ImageJ stack whose metadata records its offset)."""
    from simuq_core.inference.files import read_input
    from simuq_core.realdata.crops import index_acquisitions
    from simuq_core.realdata.normalise import resolve_offset

    frames = np.stack([_stack(300.0, 5.0, 0.8, seed) for seed in (1, 2)])  # (2, 9, 64, 64) ADU
    counts = np.clip(np.round(frames), 0, 65535).astype(np.uint16)
    path = tmp_path / ("series.ome.tif" if kind == "ome_series" else "stack.tif")
    if kind == "ome_series":
        tifffile.imwrite(path, counts, ome=True, metadata={"axes": "TZYX", "PhysicalSizeX": 0.0731,
                                                           "PhysicalSizeXUnit": "µm"})
        expected_t, pixel, offset = 2, 73.1, None
    else:
        counts = counts[:1]
        tifffile.imwrite(path, counts[0], imagej=True, resolution=(1 / 0.0731, 1 / 0.0731),
                         metadata={"axes": "ZYX", "unit": "um", "camera_offset": OFFSET})
        expected_t, pixel, offset = 1, 73.1, OFFSET

    acq = read_input(path, 9, 3, "angle_major")
    assert acq.frames.shape == (expected_t, 9, 64, 64) and acq.pixel_nm == pytest.approx(pixel, rel=1e-6)
    np.testing.assert_array_equal(acq.frames, counts.astype(np.float32))
    predict_offset = resolve_offset(None, path, acq.metadata)[0]

    index = index_acquisitions([path], tmp_path / "cache", na=1.3, wavelength_nm=488.0, default_pixel_nm=62.6)
    entry = index.acquisitions[0]
    assert entry.shape == acq.frames.shape and entry.pixel_nm == pytest.approx(acq.pixel_nm)
    assert entry.norm_offset == predict_offset == (offset if offset is not None else 0.0)

    measured = measure_files([path], na=1.3, wavelength_nm=488.0, pixel_nm=62.6)
    m = measured["files"][0]
    assert m["pixel_nm"] == pytest.approx(acq.pixel_nm) and m["layout"] == acq.layout
    if offset is not None:
        assert m["offset_source"] == "TIFF metadata 'camera_offset'"
