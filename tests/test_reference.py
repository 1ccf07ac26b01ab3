"""Scores against a reference (simuq_core/evaluation/reference.py): a std that holds the error is
found calibrated, one that does not is not, and a reference or twin of another field is named."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from simuq_core.evaluation.reference import (
    ReferenceMismatch,
    calibration_against,
    score_against_reference,
    twin_check,
)

SIZE = 128
SHIFT = (1.3, -0.7)


def _field(seed: int) -> np.ndarray:
    """Smooth random structure (lines and blobs below the grid's Nyquist)."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((SIZE, SIZE)) ** 8, 1.5)
    return img / img.max()


def _noise_std() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    return 0.01 + 0.03 * np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) / 0.05)


def _observed(ref: np.ndarray, std: np.ndarray, seed: int) -> np.ndarray:
    """``2·ref + 5`` displaced by SHIFT, plus noise of ``std`` (in the image's own units)."""
    moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(2.0 * ref + 5.0), SHIFT)).real
    return moved + np.random.default_rng(seed).normal(0.0, 1.0, ref.shape) * std


def test_a_std_that_holds_the_error_is_calibrated_and_a_wrong_one_is_not():
    ref = _field(0)
    std = 2.0 * _noise_std()  # the image is 2·ref: its noise std in its own units
    image = _observed(ref, np.roll(std, (1, -1), axis=(0, 1)), 1)  # the std map sits on the image
    std_on_image = np.roll(std, (1, -1), axis=(0, 1))
    good = calibration_against(image, std_on_image, ref)
    n = good["n_pixels"]
    # ZMS of n standard normal z: sd √(2/n); coverage: binomial sd √(p(1−p)/n). 5 sd each; the
    # Fourier shift leaves white noise white, so the pixels stay independent.
    assert good["zms"] == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert good["coverage_95"] == pytest.approx(0.95, abs=5 * math.sqrt(0.95 * 0.05 / n))
    assert good["coverage_68"] == pytest.approx(0.6827, abs=5 * math.sqrt(0.68 * 0.32 / n))
    # least squares of a noisy image onto the reference: a = 0.5 diluted by signal / (signal + noise)
    signal = np.var(2.0 * ref)
    assert good["affine_a"] == pytest.approx(0.5 * signal / (signal + np.mean(std**2)), rel=0.01)
    assert good["spearman"] > 0.3  # the error grows where the std does
    assert good["abs_z_q95"] == pytest.approx(1.96, rel=0.05)
    assert len(good["curve"]["rmv"]) == len(good["curve"]["rmse"]) > 3
    misplaced = calibration_against(image, np.flip(std_on_image), ref)  # right scale, wrong places
    assert misplaced["spearman"] < 0.1 < good["spearman"] and misplaced["coverage_95"] < 0.93
    wide = calibration_against(image, 2.0 * std_on_image, ref)
    assert wide["zms"] == pytest.approx(0.25, abs=0.02) and wide["coverage_95"] > 0.99


def test_methods_are_scored_alike_and_the_better_one_wins():
    ref = _field(0)
    low, high = _observed(ref, 0.02, 1), _observed(ref, 0.2, 2)
    out = score_against_reference(ref, {"low_noise": low, "high_noise": high}, k_wf=0.15, k_pattern=0.12,
                                  stds={"low_noise": np.full_like(ref, 0.02)})
    m = out["methods"]
    assert m["low_noise"]["psnr"] > m["high_noise"]["psnr"] + 10
    assert m["low_noise"]["ssim"] > m["high_noise"]["ssim"]
    np.testing.assert_allclose(m["low_noise"]["shift_yx"], [-s for s in SHIFT], atol=0.1)
    assert m["low_noise"]["spectral_corr_widefield"] > 0.9
    assert set(out["calibration"]) == {"low_noise"} and not out["warnings"]


def test_a_reference_of_another_field_or_grid_is_named_not_scored():
    ref = _field(0)
    image = _observed(ref, 0.02, 1)
    out = score_against_reference(_field(5), {"emitter": image}, k_wf=0.15, k_pattern=0.12)
    assert not out["methods"] and "does not show this field of view" in out["warnings"][0]
    small = score_against_reference(ref[:64, :64], {"emitter": image}, k_wf=0.15, k_pattern=0.12)
    assert not small["methods"] and "(128, 128) is not the reference's (64, 64)" in small["warnings"][0]
    with pytest.raises(ReferenceMismatch, match="std shape"):
        calibration_against(image, np.ones((4, 4)), ref)


def test_twins_measure_the_noise_part_of_the_std():
    ref = _field(0)
    std = _noise_std()
    e1 = ref + np.random.default_rng(3).normal(0, 1, ref.shape) * std
    e2 = _observed(ref, 2.0 * np.roll(std, (1, -1), axis=(0, 1)), 4)  # another scale and position
    s2 = 2.0 * np.roll(std, (1, -1), axis=(0, 1))
    good = twin_check(e1, std, e2, s2)
    n = good["n_pixels"]
    assert good["zms"] == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert good["coverage_95"] == pytest.approx(0.95, abs=5 * math.sqrt(0.95 * 0.05 / n))
    assert twin_check(e1, std / 3, e2, s2 / 3)["zms"] == pytest.approx(9.0, rel=0.1)
    with pytest.raises(ReferenceMismatch, match="not the same field of view"):
        twin_check(e1, std, _field(5), std)


@pytest.mark.slow
def test_score_reference_stage_on_the_shipped_biosr_crop(tmp_path):
    """The stage end to end on the shipped BioSR crop, predicted by the shipped model: every
    method scored, the emitter std calibrated, the twins compared; a reference of another field
    (the reference flipped) is named in the warnings and nothing is scored (exit status 2)."""
    import json
    import shutil
    from pathlib import Path

    import tifffile

    from stages.predict import main as predict_main
    from stages.score_reference import main as score_main

    repo = Path(__file__).resolve().parents[1]
    data = repo / "examples" / "biosr_microtubules_crop"
    model = tmp_path / "model"
    shutil.copytree(repo / "pretrained" / "mt_finetuned", model)  # the stage writes its MLflow run id
    params = str(repo / "pipelines" / "biosr" / "params.yaml")
    inputs = [str(data / "raw_level01.tif"), str(data / "raw_level09.tif")]
    assert predict_main(["--params", params, "--model", str(model), "--input", *inputs, "--out",
                         str(tmp_path / "predict" / "finetuned"), "--pattern", "blind", "--quiet"]) == 0
    assert (tmp_path / "predict" / "finetuned" / "raw_level09" / "pattern.png").is_file()  # blind estimate
    out = tmp_path / "score"
    assert score_main(["--params", params, "--predict", str(tmp_path / "predict"), "--finetuned", str(model),
                       "--reference", str(data / "sim_reference.tif"), "--out", str(out), "--twins"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    bright = report["inputs"]["raw_level09"]
    assert set(bright["methods"]) == {"widefield", "wiener", "finetuned"}
    assert bright["methods"]["wiener"]["spectral_corr_beyond"] > 0.3  # SIM information, the reference's too
    assert bright["methods"]["widefield"]["spectral_corr_beyond"] < 0.2
    calib = bright["calibration"]["finetuned"]
    assert calib["zms"] > 0 and 0 <= calib["coverage_68"] <= calib["coverage_95"] <= 1
    assert "raw_level01|raw_level09" in report["twins"]["finetuned"]
    assert (out / "summary.md").is_file() and (out / "calibration.png").is_file()
    flipped = tmp_path / "flipped.tif"
    tifffile.imwrite(flipped, np.ascontiguousarray(tifffile.imread(data / "sim_reference.tif")[..., ::-1, :]))
    assert score_main(["--params", params, "--predict", str(tmp_path / "predict"), "--finetuned", str(model),
                       "--reference", str(flipped), "--out", str(tmp_path / "wrong"), "--twins"]) == 2
    wrong = json.loads((tmp_path / "wrong" / "metrics.json").read_text())
    assert wrong["warnings"] and all("reference mismatch" in w for w in wrong["warnings"])
    # no reference: the twins alone, ground-truth-free
    assert score_main(["--params", params, "--predict", str(tmp_path / "predict"), "--finetuned", str(model),
                       "--out", str(tmp_path / "twins"), "--twins"]) == 0
    twins = json.loads((tmp_path / "twins" / "metrics.json").read_text())
    assert not twins["inputs"] and twins["twins"]["finetuned"]["raw_level01|raw_level09"]["zms"] > 0
