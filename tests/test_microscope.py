"""The ``microscope`` section: the instrument typed once, copied into every section that uses it,
contradictions refused by name; the frame order and the measured OTF reach predict and the index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from simuq_core.config import MICROSCOPE_KEYS, ParamsError, parse_params, parse_section
from simuq_core.network.forward import build_model, model_spec
from simuq_core.network.store import save_model
from simuq_core.realdata.checks import InputError, angle_major_order
from simuq_core.simulation.samples import sample_rng, simulate_sample
from tests._tiny import tiny_raw

ROOT = Path(__file__).resolve().parents[1]
PROFILES = [ROOT / "params.yaml", ROOT / "pipelines" / "real" / "params.yaml"]
EXAMPLE = ROOT / "examples" / "rdl_sim_microtubules"


def _raw(path: Path | None = None) -> dict:
    return tiny_raw() if path is None else yaml.safe_load(path.read_text())


def _get(params, dotted: str):
    node = params
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_every_shipped_params_file_types_the_microscope_once(path):
    """Each shipped file has a microscope section and none of the copies of its known (non-null)
    entries: every copy in the parsed params equals the microscope entry (or is replaced by
    pattern_k_frac)."""
    raw = _raw(path)
    assert raw.get("microscope"), path
    params = parse_params(raw, str(path))
    for key, target, instead in MICROSCOPE_KEYS:
        value = getattr(params.microscope, key)
        if value is None:  # unknown to the lab: the section's own value (e.g. the simulated camera)
            continue
        parent, _, leaf = target.rpartition(".")
        top = target.split(".")[0]
        written = raw.get(top) or {}
        for part in parent.split(".")[1:]:
            written = (written or {}).get(part) or {}
        assert leaf not in written, f"{path}: {target} is typed again (microscope.{key} holds it)"
        if instead and _get(params, instead) is not None:
            continue
        assert _get(params, target) == value, (path, target)


def test_a_contradicting_copy_is_refused_with_both_keys_named():
    raw = _raw()
    raw["simulate"]["psf"]["na"] = 1.2
    raw["model"]["light_pattern"]["period_lr"] = 4.0
    with pytest.raises(ParamsError) as info:
        parse_params(raw, "my.yaml")
    msg = str(info.value)
    assert msg.startswith("my.yaml: the microscope section and another section disagree")
    assert "simulate.psf.na: 1.2 contradicts microscope.na: 1.3" in msg
    assert "model.light_pattern.period_lr: 4.0 contradicts microscope.pattern_period_px: 5.0" in msg


def test_an_agreeing_copy_and_null_entries_fill_nothing_wrong():
    raw = _raw()
    raw["model"]["optics"] = {"na": 1.3, "wavelength_nm": 488.0}  # agrees: accepted, rest filled in
    raw["microscope"] |= {"pattern_period_px": None, "camera_offset_adu": None}
    raw["model"]["light_pattern"]["period_lr"] = 4.5  # no microscope period: this one stands
    raw["simulate"]["pattern_period_lr"] = 4.5
    p = parse_params(raw)
    assert p.model.optics.lr_pixel_nm == 62.6 and p.model.light_pattern.period_lr == 4.5
    assert p.simulate.period_lr == 4.5 and p.finetune.period_hint is None
    assert p.predict.norm_offset is None and p.simulate.noise.offset_adu == 100.0  # schema default


def test_microscope_reaches_simulation_model_finetune_and_predict():
    raw = _raw()
    raw["microscope"] = {"na": 1.49, "emission_nm": 525.0, "pixel_nm": 65.0, "n_angles": 2,
                         "n_phases": 5, "frame_order": "phase_major", "pattern_period_px": 3.1,
                         "camera_offset_adu": 99.0, "camera_gain_adu_per_e": 0.5,
                         "otf_file": "otf.mrc"}
    raw["ood"] = {"n_test": 2, "shifts": {}}
    del raw["simulate"]["noise"]["offset_adu"], raw["simulate"]["noise"]["gain_adu_per_e"]
    p = parse_params(raw)
    sim = p.simulate
    assert (sim.psf.na, sim.psf.wavelength_nm, sim.psf.lr_pixel_nm) == (1.49, 525.0, 65.0)
    assert (sim.n_angles, sim.n_phases, sim.period_lr) == (2, 5, 3.1)
    assert (sim.noise.offset_adu, sim.noise.gain_adu_per_e) == (99.0, 0.5)
    assert p.model.optics.model_dump() == {"na": 1.49, "wavelength_nm": 525.0, "lr_pixel_nm": 65.0}
    assert (p.model.light_pattern.n_angles, p.model.light_pattern.period_lr) == (2, 3.1)
    assert p.finetune.optics == p.model.optics
    assert (p.finetune.frame_order, p.finetune.period_hint, p.finetune.norm_offset,
            p.finetune.otf_file) == ("phase_major", 3.1, 99.0, "otf.mrc")
    assert (p.predict.frame_order, p.predict.period_hint, p.predict.norm_offset,
            p.predict.otf_file) == ("phase_major", 3.1, 99.0, "otf.mrc")
    # The section-only reader of the finetune / real_report commands gets the same copies.
    assert parse_section({"microscope": raw["microscope"]}, "finetune") == p.finetune


def test_pattern_given_as_a_fraction_of_the_cutoff_takes_the_period_s_place():
    raw = _raw()
    raw["simulate"]["pattern_k_frac"] = 0.6
    sim = parse_params(raw).simulate
    assert sim.pattern_period_lr is None and sim.period_lr == pytest.approx(5.0, rel=0.01)


def test_bad_microscope_values_are_named():
    raw = _raw()
    raw["microscope"]["na"] = 2.5
    with pytest.raises(ParamsError, match=r"microscope\.na"):
        parse_params(raw)
    with pytest.raises(ParamsError, match=r"microscope\.emission_nm"):
        parse_section({"microscope": {"na": 1.4, "emission_nm": -1, "pixel_nm": 60}}, "finetune")
    raw = _raw()
    raw["microscope"]["pattern_period_px"] = 2.5  # jitter 0 fine; with 30 % jitter below Nyquist
    raw["simulate"]["period_jitter"] = 0.3
    with pytest.raises(ParamsError, match="Nyquist"):
        parse_params(raw)


# -- frame order and measured OTF at predict / index time --------------------------------------


def test_phase_major_files_are_reordered_before_prediction(tmp_path):
    """The same stack stored angle-major and phase-major gives identical maps when the second is
    declared phase-major (CLI ``--frame-order`` and ``predict.frame_order``)."""
    from stages.predict import main as predict_main

    raw = _raw()
    raw["simulate"] |= {"lr_h": 32, "lr_w": 32}
    p = parse_params(raw)
    model = build_model(p.model, p.uq, 9, 0)
    folder = tmp_path / "model"
    folder.mkdir()
    save_model(model, model_spec(p.model, p.uq, 9) | {"mode": "selfsup", "train_crop": [16, 16]}, folder)
    frames = simulate_sample(sample_rng(0, "test", 0), p.simulate).raw.astype(np.float32)
    order = angle_major_order(3, 3)  # phase-major -> angle-major; its inverse stores phase-major
    inverse = np.argsort(order)
    tifffile.imwrite(tmp_path / "angle.tif", frames)
    tifffile.imwrite(tmp_path / "phase.tif", frames[inverse])
    np.testing.assert_array_equal(frames[inverse][order], frames)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    common = ["--model", str(folder), "--params", str(params), "--quiet", "--device", "cpu",
              "--epistemic", "0", "--tile", "32"]
    assert predict_main([*common, "--input", str(tmp_path / "angle.tif"), "--out", str(tmp_path / "a")]) == 0
    assert predict_main([*common, "--input", str(tmp_path / "phase.tif"), "--out", str(tmp_path / "p"),
                         "--frame-order", "phase_major"]) == 0
    assert predict_main([*common, "--input", str(tmp_path / "phase.tif"), "--out", str(tmp_path / "w")]) == 0
    a = tifffile.imread(tmp_path / "a" / "angle" / "emitter.tif")
    np.testing.assert_allclose(tifffile.imread(tmp_path / "p" / "phase" / "emitter.tif"), a, rtol=1e-6)
    wrong = tifffile.imread(tmp_path / "w" / "phase" / "emitter.tif")
    assert np.abs(wrong - a).max() > 1e-3 * np.abs(a).max()  # the declared order matters


def test_measured_otf_file_reaches_the_blind_search_and_a_missing_one_is_named(tmp_path):
    from simuq_core.realdata.crops import index_acquisitions

    otf = EXAMPLE / "TIRF488_cam1_0_z30_OTF2d.mrc"
    kwargs = {"na": 1.47, "wavelength_nm": 525.0, "default_pixel_nm": 62.6, "period_hint": 2.87}
    index = index_acquisitions([EXAMPLE / "MT.mrc"], tmp_path / "c1", otf_file=otf, **kwargs)
    periods = np.asarray(index.acquisitions[0].pattern["period_px"])
    assert np.all(np.abs(periods / 2.87 - 1) < 0.01), periods
    with pytest.raises(InputError, match="nothere.mrc: no such OTF file"):
        index_acquisitions([EXAMPLE / "MT.mrc"], tmp_path / "c2", otf_file=tmp_path / "nothere.mrc",
                           **kwargs)


def test_finetuning_warns_when_the_microscope_is_not_the_pretrained_model_s():
    from simuq_core.config import OpticsPrior
    from simuq_core.workflows.finetune import optics_mismatch

    model = OpticsPrior(na=1.3, wavelength_nm=488.0, lr_pixel_nm=62.6)
    assert optics_mismatch(OpticsPrior(na=1.31, wavelength_nm=488.0, lr_pixel_nm=62.6), model) is None
    msg = optics_mismatch(OpticsPrior(na=1.49, wavelength_nm=525.0, lr_pixel_nm=62.6), model)
    assert "NA 1.49 vs the model's 1.3" in msg and "emission wavelength (nm) 525" in msg
    assert "camera pixel" not in msg
