"""The real-data pipeline (pipelines/real/): predict on MRC input with the blind full-field pattern,
the GT-free full-field metrics, fine-tuning logged to MLflow and the report stage on tiny outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml

from simuq_core.config import parse_params
from simuq_core.evaluation.gtfree import brightest_window, field_metrics
from simuq_core.inference.image_pattern import pattern_source
from simuq_core.network.forward import build_model, model_spec
from simuq_core.network.store import save_model
from simuq_core.realdata.reader import read_acquisition
from tests._tiny import tiny_raw

REPO = Path(__file__).resolve().parents[1]
MT = REPO / "examples" / "rdl_sim_microtubules" / "MT.mrc"
PERIOD = 2.87  # MT.mrc's pattern period (camera px), blind estimate on the full field
MT_OPTICS = {"na": 1.47, "wavelength_nm": 525.0, "lr_pixel_nm": 62.6}
MT_MICROSCOPE = {"na": 1.47, "emission_nm": 525.0, "pixel_nm": 62.6}


def _tiny_mt_model(folder: Path) -> Path:
    """An untrained tiny network with MT.mrc's optics and a wrong period prior (5 px): the blind
    estimate must not depend on it."""
    raw = tiny_raw()
    raw["microscope"] |= MT_MICROSCOPE
    raw["model"]["unet_upsample"] = "resize_conv"  # as pipelines/real/params.yaml
    params = parse_params(raw)
    model = build_model(params.model, params.uq, 9, 0)
    spec = model_spec(params.model, params.uq, 9) | {"mode": "selfsup", "train_crop": [32, 32]}
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, spec, folder)
    return folder


def _params_file(tmp_path: Path, finetune: dict | None = None) -> Path:
    raw = tiny_raw()
    raw["microscope"] |= MT_MICROSCOPE | {"pattern_period_px": None}  # blind search
    raw["predict"] |= {"tile": 64, "overlap": 16, "wiener": True, "wiener_w": 0.1,
                       "tile_margin": 5, "context": "crops"}  # as pipelines/real/params.yaml
    if finetune is not None:
        raw["finetune"] = finetune
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _write_mrc_crop(path: Path, size: int) -> None:
    """The centred ``size``² crop of MT.mrc as a strict MRC2014 file (pixel size in Å)."""
    frames = read_acquisition(MT).frames[0]
    y0 = (frames.shape[-2] - size) // 2
    crop = frames[:, y0:y0 + size, y0:y0 + size].astype(np.uint16)
    with mrcfile.new(path) as mrc:
        mrc.set_data(crop)
        mrc.voxel_size = 626.0


def test_pattern_source_auto_is_blind_for_mrc_only():
    assert pattern_source("auto", "a/b.mrc") == "blind" and pattern_source("auto", "a/b.DV") == "blind"
    assert pattern_source("auto", "a/b.tif") == "model"
    assert pattern_source("model", "a/b.mrc") == "model"
    with pytest.raises(ValueError, match="pattern source"):
        pattern_source("guess", "a.mrc")


@pytest.fixture(scope="module")
def pretrained_prediction(tmp_path_factory) -> Path:
    """The predict command's output folder for MT.mrc and the untrained tiny MT model (run once:
    the MRC test reads it, and it is the pre-trained side of the fine-tuning report)."""
    from stages.predict import main

    root = tmp_path_factory.mktemp("mt_predict")
    out = root / "pred"
    code = main(["--model", str(_tiny_mt_model(root / "model")), "--input", str(MT), "--out", str(out),
                 "--params", str(_params_file(root)), "--quiet", "--device", "cpu"])
    assert code == 0
    return out


@pytest.mark.slow
def test_predict_on_mrc_uses_the_blind_full_field_pattern(pretrained_prediction):
    """MT.mrc through the predict command (MRC reader, ``--pattern auto``): every angle's period
    within 2 % of 2.87 px although the model's prior says 5 px, no frame-order blame (the pattern
    sits at 99 % of the cut-off), the Wiener map from the same pattern, maps on the 2× grid."""
    out = pretrained_prediction
    summary = json.loads((out / "MT" / "summary.json").read_text())
    periods = [a["period_px"] for a in summary["light_pattern"]["angles"]]
    assert np.all(np.abs(np.asarray(periods) / PERIOD - 1) < 0.02), periods
    assert summary["pattern"]["method"].startswith("blind")
    assert summary["pattern"]["ok"] and not summary["pattern"]["frame_order_suspect"]
    assert not any("frame order" in w or "phase-major" in w for w in summary["warnings"])
    assert np.allclose(summary["wiener"]["period_px"], periods, rtol=1e-4)
    assert summary["maps"]["emitter"]["shape"] == [512, 512]
    assert summary["maps"]["emitter"]["pixel_nm"] == pytest.approx(31.3, rel=1e-3)


def test_blind_pattern_of_an_mrc2014_crop_with_a_period_hint(tmp_path):
    """A 128-px strict MRC2014 crop: blind over the whole band an angle's peak can be lost at this
    size; with the period hint all three are found (within 2 %); a weak estimate is reported as
    such, never blamed on the frame order."""
    from simuq_core.inference.files import read_input
    from simuq_core.inference.image_pattern import blind_image_pattern
    from simuq_core.realdata.normalise import normalise

    path = tmp_path / "crop.mrc"
    _write_mrc_crop(path, 128)
    info = read_input(path, 9, 3, "angle_major")
    assert info.pixel_nm == pytest.approx(62.6)
    raw = info.frames[0]
    x, _ = normalise(raw, 0.0, 99.9, str(path))
    spec = {"model": {"optics": MT_OPTICS, "light_pattern": {"n_angles": 3}}}
    (_, centre), diag, cutoff = blind_image_pattern(x, spec, info.pixel_nm, None, str(path), PERIOD)
    assert centre == (64.0, 64.0) and cutoff == pytest.approx(0.3506, rel=1e-3)
    assert np.all(np.abs(diag.angle_major.period_px / PERIOD - 1) < 0.02), diag.angle_major.period_px
    # At 128 px the bands are near the detection threshold: whatever the verdict, a weak pattern
    # near the cut-off is explained by signal / optics, never blamed on the frame order.
    _, blind, _ = blind_image_pattern(x, spec, info.pixel_nm, None, str(path))
    for verdict in (diag, blind):
        assert not verdict.frame_order_suspect
        assert verdict.ok or "not the likely cause" in verdict.message


def test_field_metrics_calibration_and_limits():
    """z-statistics of a known Gaussian residual: with the true σ the ZMS is 1 and the coverages
    0.683 / 0.95; with σ doubled the ZMS drops to 0.25 (so the check can fail). n = 9·64·64
    residuals: sd(ZMS) = √(2/n) = 0.0074 and sd(coverage) ≤ √(0.25/n) = 0.0026; tolerances are
    5 sd."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 1.0, (9, 64, 64))
    sigma = 0.05 + 0.05 * x
    rec = x - sigma * rng.standard_normal(x.shape)
    emitter = np.kron(x.mean(axis=0), np.ones((2, 2)))
    maps = {"rec": rec, "rec_std": sigma, "emitter": emitter, "emitter_std": np.full_like(emitter, 0.1)}
    k = np.asarray([[0.0, 1 / PERIOD], [0.3, 0.15], [-0.3, 0.15]])
    m = field_metrics(x, maps, 62.6, 2, 1.47, 525.0, k)
    n = x.size
    assert m["rec_zms"] == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert m["rec_coverage_68"] == pytest.approx(0.6827, abs=5 * math.sqrt(0.25 / n))
    assert m["rec_coverage_95"] == pytest.approx(0.95, abs=5 * math.sqrt(0.25 / n))
    assert m["widefield_limit_nm"] == pytest.approx(525 / (2 * 1.47))
    k_abs = np.linalg.norm(k, axis=-1).mean()
    assert m["sim_limit_nm"] == pytest.approx(525 / (2 * 1.47 * (1 + k_abs / (2 * 1.47 * 62.6 / 525))))
    assert m["emitter_std_p95_over_mean"] == pytest.approx(1.0)
    # A std map that is large only along the field's edge (the one-sided emitter there): its
    # full-field p95/mean sees the edge, the interior one (an Airy diameter, 7 camera px, left
    # out) does not.
    edged = np.full_like(emitter, 0.1)
    edged[:, :8] = edged[:, -8:] = edged[:8] = edged[-8:] = 1.0
    e = field_metrics(x, maps | {"emitter_std": edged}, 62.6, 2, 1.47, 525.0, k)
    assert e["emitter_std_p95_over_mean"] > 2.0
    assert e["emitter_std_p95_over_mean_interior"] == pytest.approx(1.0)
    # rec_std² holds the camera noise here: its Hann-weighted mean is the noise level.
    assert 0.05 < m["rec_std_hann"] < 0.1
    doubled = field_metrics(x, maps | {"rec_std": 2 * sigma}, 62.6, 2, 1.47, 525.0, k)
    assert doubled["rec_zms"] == pytest.approx(0.25, abs=5 * math.sqrt(2 / n) / 4)
    # Grid index (period 4 camera px = 8 model px): an image without a grid has only the sampling
    # spread of the 64 position means, ≈ sd / mean / √(N/64) (0.008 here; bound 3×); a fixed
    # 8-px pattern 1 + 0.05·cos·cos adds its RMS 0.05 / 2 = 0.025 (measured 0.028).
    assert m["emitter_grid_index"] < 3 * emitter.std() / emitter.mean() / math.sqrt(emitter.size / 64)
    yy, xx = np.mgrid[:128, :128]
    grid = 1.0 + 0.05 * np.cos(2 * np.pi * yy / 8) * np.cos(2 * np.pi * xx / 8)
    gridded = field_metrics(x, maps | {"emitter": emitter * grid}, 62.6, 2, 1.47, 525.0, k)
    assert gridded["emitter_grid_index"] == pytest.approx(0.05 / 2, abs=0.01)


def test_brightest_window_finds_the_bright_square_inside_a_rectangle():
    img = np.zeros((64, 64))
    img[8:24, 4:20] = 5.0  # brightest, but left of the allowed columns
    img[40:56, 44:60] = 1.0
    assert brightest_window(img, 16) == (8, 4)
    assert brightest_window(img, 16, within=(0, 64, 32, 64)) == (40, 44)
    assert brightest_window(img, 16, within=(32, 64, 0, 64)) == (40, 44)


@pytest.mark.slow
def test_finetune_logs_to_mlflow_and_report_stage(tmp_path, monkeypatch, pretrained_prediction):
    """Fine-tune a tiny model a few steps on MT.mrc with MLflow logging into a temporary store,
    predict with it, then the report stage: DVC metrics JSON, the figure, and the report logged
    into the fine-tuning run. (The pre-trained model's prediction is the module's: the same
    untrained network, input and predict section.)"""
    import shutil

    import mlflow

    from stages.finetune import main as finetune_main
    from stages.predict import main as predict_main
    from stages.real_report import main as report_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("SIMUQ_TRACKING", "required")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    section = {"inputs": [str(MT)], "batch_size": 4, "epochs": 1, "crops_per_epoch": 8, "crop": 32,
               "lr": 1e-3, "warmup_steps": 1, "log_every": 1, "val_tile": 64, "max_val_tiles": 2,
               "num_threads": 0, "optics": MT_OPTICS}
    params = _params_file(tmp_path, section)
    pre = _tiny_mt_model(tmp_path / "pre")
    ft = tmp_path / "ft"
    assert finetune_main(["--model", str(pre), "--out", str(ft), "--params", str(params),
                          "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    run_id = json.loads((ft / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["finetune.crop"] == "32" and run.data.params["model.optics.na"] == "1.47"
    assert "finetuned_rec_zms" in run.data.metrics and "pretrained_rec_zms" in run.data.metrics
    assert client.get_metric_history(run_id, "loss")

    shutil.copytree(pretrained_prediction, tmp_path / "predict" / "pretrained")
    assert predict_main(["--model", str(ft), "--input", str(MT), "--out",
                         str(tmp_path / "predict" / "finetuned"), "--params", str(params), "--quiet",
                         "--device", "cpu"]) == 0
    figure = tmp_path / "fig.png"
    assert report_main(["--predict", str(tmp_path / "predict"), "--finetuned", str(ft), "--out",
                        str(tmp_path / "report"), "--figure", str(figure), "--params", str(params)]) == 0
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(report["full_field"]) == {"pretrained", "finetuned"}
    field = report["full_field"]["finetuned"]["MT"]
    for key in ("rec_zms", "rec_coverage_95", "noise_std_classical", "widefield_resolution_nm",
                "wiener_resolution_nm", "sim_limit_nm", "emitter_std_p95_over_mean"):
        assert field[key] is not None and math.isfinite(field[key]), key
    assert field["period_px_mean"] == pytest.approx(PERIOD, rel=0.02)
    # The Wiener image with the blind pattern resolves beyond widefield (test_wiener_real.py).
    assert field["wiener_resolution_nm"] < 0.8 * field["widefield_resolution_nm"]
    assert set(report["heldout"]) == {"pretrained", "finetuned"}
    # The fine-tuned model's own OOD reference was read by predict (no --ood-reference, no dropout):
    # its check ran on MT.mrc and is in the report; the untrained model has none.
    ood = json.loads((tmp_path / "predict" / "finetuned" / "MT" / "summary.json").read_text())["ood"]
    assert ood["flagged"] in (True, False) and set(ood["ratios"]) == {"input", "misfit", "combined"}
    assert field["ood_flagged"] == float(ood["flagged"])
    assert "ood_flagged" not in report["full_field"]["pretrained"]["MT"]
    assert figure.stat().st_size > 10_000
    metrics = client.get_run(run_id).data.metrics
    assert metrics["report_full_field_finetuned_MT_rec_zms"] == pytest.approx(field["rec_zms"])


def test_real_params_file_is_valid_and_matched_to_the_example():
    """pipelines/real/params.yaml passes the full schema (``finetune`` included) and describes the
    shipped stack's microscope: one optics for simulation, model and fine-tuning, the blind
    period as simulated period and as the model's prior, and model crops the U-Net accepts."""
    params = parse_params(yaml.safe_load((REPO / "pipelines" / "real" / "params.yaml").read_text()))
    psf, optics = params.simulate.psf, params.model.optics
    assert (psf.na, psf.wavelength_nm, psf.lr_pixel_nm) == tuple(optics.model_dump().values())
    assert params.finetune.optics == optics
    assert (optics.na, optics.wavelength_nm, optics.lr_pixel_nm) == (1.47, 525.0, 62.6)
    assert params.simulate.period_lr == pytest.approx(PERIOD, rel=0.01)
    assert params.model.light_pattern.period_lr == pytest.approx(PERIOD, rel=0.01)
    assert params.finetune.crop % 2**params.model.depth == 0
    assert params.finetune.crop == params.simulate.lr_h


def test_real_pipeline_names_its_raw_data_in_one_place():
    """The raw stacks appear in pipelines/real only through dvc.yaml's two variables: the folder
    DVC tracks and the files of it the stages read (which match the shipped example); neither the
    params file nor any stage repeats a path to them."""
    import glob

    dvc = yaml.safe_load((REPO / "pipelines" / "real" / "dvc.yaml").read_text())
    variables = {k: v for entry in dvc["vars"] for k, v in entry.items()}
    assert set(variables) == {"raw_dir", "raw_files"}
    assert [Path(f).name
            for f in glob.glob(str(REPO / variables["raw_dir"] / variables["raw_files"]))] == ["MT.mrc"]
    text = (REPO / "pipelines" / "real" / "dvc.yaml").read_text()
    assert text.count(variables["raw_dir"]) == 1
    def strings(node):
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    params = yaml.safe_load((REPO / "pipelines" / "real" / "params.yaml").read_text())
    assert not [s for s in strings(params) if variables["raw_dir"] in s]
    for stage in dvc["stages"].values():
        cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
        assert all("MT.mrc" not in c for c in cmds)


def test_log_spectrum_puts_a_cosine_at_its_frequency():
    """A cosine of 8 cycles across 64 px: the spectrum peaks 8 px from the centre (Hann window,
    mean removed), at the top of the dynamic range."""
    from simuq_core.evaluation.gtfree import log_spectrum

    y, x = np.mgrid[:64, :64]
    spec = log_spectrum(1.0 + np.cos(2 * np.pi * 8 * x / 64))
    peak = np.unravel_index(np.argmax(spec), spec.shape)
    assert peak in ((32, 24), (32, 40))


def test_carrier_leakage_sees_residual_stripes_and_not_clean_structure():
    """Residual stripes at one wave vector (5 % of the image's mean, as a carrier left by a wrong
    phase) raise the carrier power far above the same image's without them; on white noise, every
    carrier stays below 13 dB (a bin 20× its ring's median: probability 2⁻²⁰ per bin)."""
    from simuq_core.evaluation.gtfree import carrier_leakage

    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    clean = gaussian_filter(rng.random((128, 128)) ** 6, 2.5)  # band-limited, as a reconstruction is
    k = np.array([[0.15, 0.08], [-0.02, 0.17], [0.13, -0.1]])
    yy, xx = np.mgrid[:128, :128]
    stripes = clean + 0.05 * clean.mean() * np.cos(2 * np.pi * (k[1, 0] * yy + k[1, 1] * xx))
    quiet, loud = carrier_leakage(clean, k), carrier_leakage(stripes, k)
    assert loud["carrier_db_k1"] > quiet["carrier_db_k1"] + 15.0, (quiet, loud)
    assert loud["carrier_db_max"] >= loud["carrier_db_k1"]
    assert carrier_leakage(rng.normal(size=(128, 128)), k)["carrier_db_max"] < 13.0


def test_instrument_pattern_of_a_128px_crop_from_the_full_fields_wave_vectors(tmp_path):
    """The 128-px crop of MT.mrc with the wave vectors of the full 256-px field (as measured on a
    bright acquisition): the phases are fitted at them, every angle detected, the periods those
    of the field; a measure JSON hands them to predict (``--instrument``), a file without any is
    refused by name."""
    from simuq_core.inference.files import read_input
    from simuq_core.inference.image_pattern import (
        blind_image_pattern,
        instrument_image_pattern,
        pattern_source,
    )
    from simuq_core.inference.run import PredictUsageError, _with_instrument
    from simuq_core.io import write_json
    from simuq_core.realdata.normalise import normalise

    full = read_input(MT, 9, 3, "angle_major")
    spec = {"model": {"optics": MT_OPTICS, "light_pattern": {"n_angles": 3}}}
    x_full, _ = normalise(full.frames[0], 0.0, 99.9, str(MT))
    _, field, _ = blind_image_pattern(x_full, spec, full.pixel_nm, None, str(MT))
    k = np.asarray(field.angle_major.estimate.k[0], np.float64)
    measured = tmp_path / "measured.json"
    write_json(measured, {"instrument_pattern": {"k_cycles_per_px": k.tolist(), "pixel_nm": 62.6}})
    spec = _with_instrument(spec, measured)
    assert pattern_source("auto", "a.tif", True) == "instrument"
    path = tmp_path / "crop.mrc"
    _write_mrc_crop(path, 128)
    info = read_input(path, 9, 3, "angle_major")
    x, _ = normalise(info.frames[0], 0.0, 99.9, str(path))
    (_, centre), diag, _ = instrument_image_pattern(x, spec, info.pixel_nm, None, str(path))
    assert diag.ok and centre == (64.0, 64.0), diag.message
    np.testing.assert_allclose(diag.angle_major.period_px, field.angle_major.period_px, rtol=1e-6)
    with pytest.raises(PredictUsageError, match="no instrument_pattern"):
        write_json(tmp_path / "empty.json", {"files": []})
        _with_instrument(spec, tmp_path / "empty.json")
    with pytest.raises(PredictUsageError, match="no such file"):
        _with_instrument(spec, tmp_path / "missing.json")
