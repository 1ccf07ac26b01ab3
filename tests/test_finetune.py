"""Fine-tuning on real raw acquisitions (simuq_core/workflows/finetune.py, stages/finetune.py): the classical
noise estimate against known σ, the params schema, the streamed batch source in the engine, and a
tiny end-to-end run on the shipped MT.mrc."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from simuq_core.evaluation.gtfree import classical_noise_variance
from simuq_core.network.forward import build_model, model_spec
from simuq_core.network.store import load_model, save_model
from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.pattern.blind import airy_camera_otf
from simuq_core.workflows.finetune import FinetuneParams
from tests._tiny import tiny_params

REPO = Path(__file__).resolve().parents[1]
MT = REPO / "examples" / "rdl_sim_microtubules" / "MT.mrc"
CUTOFF = otf_cutoff_cycles_per_px(1.3, 488.0, 62.6)  # 0.334 cycles/px


def _band_limited(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``(n, size, size)`` bright, structured, strictly band-limited signal (Airy OTF)."""
    otf = airy_camera_otf(CUTOFF)(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    sparse = (rng.random((n, size, size)) < 0.05) * rng.uniform(200, 2000, (n, size, size)) + 50.0
    return np.real(np.fft.ifft2(np.fft.fft2(sparse) * otf))


def _w2_mean(var: np.ndarray) -> float:
    """The Hann-weighted mean variance the estimator targets (written out independently)."""
    h, w = var.shape[-2:]
    wy, wx = np.sin(np.pi * (np.arange(h) + 0.5) / h) ** 2, np.sin(np.pi * (np.arange(w) + 0.5) / w) ** 2
    hann2 = np.outer(wy, wx) ** 2
    return float((var * hann2).sum(axis=(-2, -1)).mean() / hann2.sum())


@pytest.mark.parametrize("kind", ["constant", "poisson_gaussian"])
def test_classical_noise_variance_recovers_known_sigma(kind):
    rng = np.random.default_rng(7)
    clean = _band_limited(rng, 9, 128)
    if kind == "constant":
        var = np.full_like(clean, 4.0)
    else:  # shot noise (gain 2) + read noise 5 + a smooth patch of extra noise
        yy, xx = np.mgrid[0:128, 0:128]
        patch = 400.0 * np.exp(-((yy - 40) ** 2 + (xx - 80) ** 2) / (2 * 15.0**2))
        var = 2.0 * np.clip(clean, 0, None) + 25.0 + patch
    noisy = clean + rng.standard_normal(clean.shape) * np.sqrt(var)
    est, n_bins = classical_noise_variance(noisy, CUTOFF)
    truth = _w2_mean(var)
    # Each out-of-band bin is an exponential variable (relative sd 1) and n_bins of them are
    # independent up to the Hann window's bin correlation (variance ×2.25 in 2-D), so the relative
    # standard error is 1.5/√n_bins (~0.5 % here); 5 standard errors, plus 1 % for the leakage of
    # the signal's last in-band frequencies through the window.
    tol = 5 * 1.5 / math.sqrt(n_bins) + 0.01
    assert est == pytest.approx(truth, rel=tol)
    # Without noise the out-of-band power is (nearly) nil: the signal does not leak into it.
    assert classical_noise_variance(clean, CUTOFF)[0] < 0.01 * truth


def test_classical_noise_variance_needs_an_out_of_band_region():
    with pytest.raises(ValueError, match="under-samples"):
        classical_noise_variance(np.zeros((1, 32, 32)), 0.7)


def test_finetune_params_are_strict():
    assert FinetuneParams().train_params().lr == pytest.approx(1e-4)
    with pytest.raises(ValidationError, match="extra"):
        FinetuneParams(learning_rate=1e-3)
    with pytest.raises(ValidationError):
        FinetuneParams(val_fraction=1.5)


def _tiny_model(folder: Path) -> Path:
    params = tiny_params()
    model = build_model(params.model, params.uq, 9, 0)
    spec = model_spec(params.model, params.uq, 9) | {"mode": "selfsup", "train_crop": [16, 16]}
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, spec, folder)
    return folder


@pytest.mark.slow
def test_end_to_end_finetune_on_mt(tmp_path):
    """A few steps on the shipped TIRF-SIM stack through the CLI: a loadable model with the same
    network spec, changed parameters, and the GT-free metrics of the held-out strip."""
    from stages.finetune import main

    pre = _tiny_model(tmp_path / "pre")
    section = {"batch_size": 4, "epochs": 2, "crops_per_epoch": 8, "crop": 16, "lr": 1e-3, "warmup_steps": 1,
               "log_every": 1, "val_tile": 64, "max_val_tiles": 3, "num_threads": 1,
               "optics": {"na": 1.47, "wavelength_nm": 525.0, "lr_pixel_nm": 62.6}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"finetune": section}))
    out = tmp_path / "ft"
    code = main(["--model", str(pre), "--input", str(MT), "--out", str(out), "--params",
                 str(tmp_path / "params.yaml"), "--cache", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    model, spec = load_model(out)
    _, spec_pre = load_model(pre)
    assert spec["model"] == spec_pre["model"] and spec["uq"] == spec_pre["uq"]
    assert spec["mode"] == "finetune" and spec["train_crop"] == [16, 16]
    before = np.load(pre / "model.npz")
    after = np.load(out / "model.npz")
    assert set(before.files) == set(after.files)
    assert any(not np.array_equal(before[k], after[k]) for k in before.files)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["index"]["n_acquisitions"] == 1 and metrics["train"]["steps"] == 4
    val = metrics["finetuned"]
    for key in ("rec_zms", "rec_coverage_68", "rec_coverage_95", "noise_std_pred", "noise_std_classical",
                "widefield_resolution_nm", "widefield_limit_nm", "sim_limit_nm", "emitter_std_p95_over_mean"):
        assert val[key] is not None and math.isfinite(val[key]), key
    assert 0 <= val["rec_coverage_68"] <= val["rec_coverage_95"] <= 1
    # MT.mrc: NA 1.47 at 525 nm (header), period ≈ 2.87 px at ≈ 0.99 of the cut-off.
    assert val["widefield_limit_nm"] == pytest.approx(525 / (2 * 1.47))
    assert val["sim_limit_nm"] == pytest.approx(525 / (2 * 1.47 * (1 + 0.99)), rel=0.02)
    assert val["n_tiles"] == 3
    _check_ood_reference(out)
    # the model folder carries predict's settings: the fine-tuning's microscope, no params needed
    from simuq_core.config import read_sections

    _, predict = read_sections(out / "predict.yaml", "predict")
    assert predict.frame_order == "angle_major" and predict.equalize_frames is False


def _check_ood_reference(model_dir: Path) -> None:
    """The fine-tuned model's own out-of-distribution reference: data-only scores (no dropout),
    thresholds from its tiles. The shipped stack's own crops sit inside it; the same crops out of
    focus are flagged by the input statistics, and ``ood_check`` works without MC-dropout maps."""
    from scipy.ndimage import gaussian_filter

    from simuq_core.inference.ood import OOD_REFERENCE_FILE, ood_check
    from simuq_core.realdata.reader import read_acquisition
    from simuq_core.uncertainty.epistemic import input_distance, input_features

    ref = json.loads((model_dir / OOD_REFERENCE_FILE).read_text())
    assert set(ref) >= {"input", "misfit", "input_model"} and "epistemic" not in ref
    assert ref["n_tiles"] >= 3 and ref["input"]["threshold"] > 0
    model = ref["input_model"]
    frames = np.asarray(read_acquisition(MT).frames[0], np.float64)
    x = frames / np.percentile(frames, 99.9)
    crops = np.stack([x[:, y:y + 64, c:c + 64] for y in (0, 96, 192) for c in (0, 96)])
    ours = input_distance(input_features(crops, model["window"], model["otf_cutoff"]), model)
    # ... out of focus (a 2-px Gaussian blur: no camera noise, no fine structure left)
    flat = gaussian_filter(crops, (0, 0, 2, 2))
    theirs = input_distance(input_features(flat, model["window"], model["otf_cutoff"]), model)
    assert np.median(ours) < ref["input"]["threshold"] < theirs.min(), (ours, theirs)
    maps = {"emitter": np.kron(crops[0].mean(axis=0), np.ones((2, 2))), "rec": crops[0],
            "rec_std": np.full_like(crops[0], 0.05)}
    report = ood_check(flat[0], maps, ref, "flat")
    assert report["flagged"] and "input" in report["ratios"] and "outside the training" in report["message"]


@pytest.mark.slow
def test_finetune_variance_refit_and_equalised_frames(tmp_path, monkeypatch):
    """``var_refit_epochs``: a second phase trains only the variance heads (the mean path is
    frozen: identical to a run without the phase), on frames divided by their whole-field gains;
    ``resim_epochs``: a third trains only the emitter variance head.
    (The second run also has too little data for an OOD reference: it is skipped with the reason,
    the model is still saved.)"""
    import simuq_core.workflows.finetune as ft
    from stages.finetune import main

    pre = _tiny_model(tmp_path / "pre")
    section = {"batch_size": 4, "epochs": 1, "crops_per_epoch": 8, "crop": 16, "lr": 1e-3, "warmup_steps": 1,
               "log_every": 1, "val_tile": 64, "max_val_tiles": 2, "num_threads": 0, "equalize_frames": True,
               "optics": {"na": 1.47, "wavelength_nm": 525.0, "lr_pixel_nm": 62.6}}
    outs = {}
    for refit in (0, 1):
        if refit:
            def too_little(*args, **kwargs):
                raise ValueError("fit_input_model needs at least 2 feature vectors, got 1")

            monkeypatch.setattr(ft, "ood_reference_from_data", too_little)
        params = {"finetune": section | {"var_refit_epochs": refit}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        outs[refit] = tmp_path / f"ft{refit}"
        assert main(["--model", str(pre), "--input", str(MT), "--out", str(outs[refit]), "--params",
                     str(tmp_path / "params.yaml"), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    plain, refitted = np.load(outs[0] / "model.npz"), np.load(outs[1] / "model.npz")
    variance = [k for k in plain.files if "logvar" in k or k.startswith("obs_noise_raw")]
    assert variance and any(not np.array_equal(plain[k], refitted[k]) for k in variance)
    for k in set(plain.files) - set(variance):
        np.testing.assert_array_equal(plain[k], refitted[k], err_msg=k)
    # resim_epochs: then only the emitter variance head trains, on re-simulated crops
    params = {"finetune": section | {"var_refit_epochs": 1, "resim_epochs": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--model", str(pre), "--input", str(MT), "--out", str(tmp_path / "ft_resim"), "--params",
                 str(tmp_path / "params.yaml"), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    resim = np.load(tmp_path / "ft_resim" / "model.npz")
    changed = {k for k in plain.files if not np.array_equal(refitted[k], resim[k])}
    assert changed and all(k.startswith("emitter_logvar_head") for k in changed), changed
    resim_metrics = json.loads((tmp_path / "ft_resim" / "metrics.json").read_text())
    assert resim_metrics["train"]["resim"]["steps"] == 2
    assert resim_metrics["finetuned"]["emitter_resim_zms"] > 0
    summary = json.loads((outs[1] / "metrics.json").read_text())["train"]["var_refit"]
    assert summary["steps"] == 2 and "backbone" in summary["frozen"]
    assert (outs[1] / "var_refit" / "metrics.csv").is_file()
    assert (outs[0] / "ood_reference.json").is_file() and not (outs[1] / "ood_reference.json").exists()
    assert "2 feature vectors" in json.loads((outs[1] / "metrics.json").read_text())["ood_reference"]["error"]
