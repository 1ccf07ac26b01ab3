"""The report stages on tiny trained models: debug export, calibration report, figures, tools.

The session's tiny model of each mode (tests/conftest.py, shared with the training and predict
tests) is all these tests train; everything else reuses it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from matplotlib import image as mpimg

from simuq_core.config import CalibrateParams, ExportDebugParams
from simuq_core.evaluation import calibration_curves as cc
from simuq_core.evaluation import metrics
from simuq_core.evaluation.synthetic import affine_align, make_predictor, pool_gt, pool_psf
from simuq_core.network.forward import build_model, model_spec
from simuq_core.network.store import load_model, save_model
from simuq_core.reports.debug import wait_for_figures
from simuq_core.reports.synthetic import calibrate_model, choose_samples, export_debug
from simuq_core.simulation.dataset import load_split
from stages import plot_calibration_curves, plot_metrics_curves
from tests.test_training import tiny_params

MODES = ("selfsup", "sup")
STD_PNGS = ("rec_std", "deconv_std", "emitter_std", "lp_std", "psf_std")
GT_PNGS = ("input", "emitter_pred_gt", "lp_pred_gt", "psf_pred_gt", "emitter_nll", "lp_nll",
           "uq_vs_noise")


@pytest.fixture(scope="module")
def trained(selfsup_run, sup_run):
    """``{mode: model folder}`` of the session's tiny models (read-only)."""
    return {"selfsup": selfsup_run.model_dir, "sup": sup_run.model_dir}


def assert_png_not_blank(path: Path) -> None:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, (path, img.shape)
    rgb = img[..., :3]
    # Not a single colour: a real figure has many non-background pixels and some contrast.
    non_white = np.mean(np.any(rgb < 0.95, axis=-1))
    assert non_white > 0.05 and rgb.std() > 0.05, (path, non_white, rgb.std())


# -- export_debug ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_export_debug_writes_every_promised_file(trained, tiny_data, tmp_path, mode):
    out = tmp_path / "debug"
    cfg = ExportDebugParams(seed=3, n_samples=1)
    summary = export_debug(trained[mode], tiny_data, out, cfg)

    for name in (*STD_PNGS, *(f"{s}_hist" for s in STD_PNGS), *GT_PNGS):
        assert_png_not_blank(out / f"{name}.png")
    with np.load(out / "uq_uncertainty.npz") as npz:
        for key in ("rec_std", "deconv_std", "emitter_std", "emitter_logvar", "lp_std", "lp_logvar",
                    "psf_std", "psf_logvar", "rec", "emitter", "light_pattern", "psf", "deconv",
                    "input", "noise_sigma", "emitter_gt", "lp_gt", "psf_gt"):
            assert key in npz.files, key
        assert npz["rec_std"].shape == (1, 9, 16, 16) and npz["lp_std"].shape == (1, 9, 32, 32)
        np.testing.assert_allclose(npz["emitter_std"] ** 2, np.exp(npz["emitter_logvar"]), rtol=1e-5)
        rec_std = npz["rec_std"]
    for comp in ("rec", "deconv", "emitter", "lp", "psf"):
        for kind in ("mean", "std"):
            with tifffile.TiffFile(out / f"{comp}_{kind}.tif") as tif:
                assert tif.is_imagej and tif.series[0].dtype == np.float32
                data = tif.asarray()
        if comp == "rec":
            np.testing.assert_array_equal(data.reshape(rec_std.shape), rec_std)  # T=1 squeezed

    on_disk = json.loads((out / "uq_summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for name in ("rec_std", "deconv_std", "emitter_std", "emitter_logvar", "lp_std", "psf_std",
                 "rec", "emitter"):
        assert set(on_disk[name]) == {"mean", "p95"}, name
    assert set(on_disk["nll"]) == {"rec", "emitter", "lp"}
    assert all(np.isfinite(v) for v in on_disk["nll"].values())
    assert on_disk["emitter_affine_fit"] is (mode == "selfsup")
    assert on_disk["mode"] == mode and on_disk["n_samples"] == 1
    # The samples are a seeded choice from the test split.
    assert on_disk["sample_indices"] == choose_samples(2, 1, 3).tolist()
    test = load_split(tiny_data, "test")
    assert on_disk["samples"] == [test.names[i] for i in on_disk["sample_indices"]]
    assert on_disk["rec_std"]["mean"] == pytest.approx(float(rec_std.astype(np.float64).mean()),
                                                       rel=1e-6)


def test_training_debug_folders_have_the_same_files(trained):
    wait_for_figures()
    for mode in MODES:
        folders = sorted((trained[mode] / "debug_samples").iterdir())
        assert len(folders) == 2
        for folder in folders:
            for name in (*STD_PNGS, *GT_PNGS):
                assert (folder / f"{name}.png").is_file(), folder / name
            summary = json.loads((folder / "uq_summary.json").read_text())
            assert summary["emitter_affine_fit"] is (mode == "selfsup")
        assert_png_not_blank(folders[-1] / "uq_vs_noise.png")


# -- calibrate -------------------------------------------------------------------------------


def _expected_components(model_dir: Path, data_dir: Path, split: str, mode: str) -> dict:
    """Independent re-computation of the arrays the calibration report compares."""
    model, spec = load_model(model_dir)
    from simuq_core.config import UQParams

    data = load_split(data_dir, split)
    pred = make_predictor(UQParams(**spec["uq"]), 2)(model, data.raw)
    factor = spec["hr_factor"] // spec["model"]["rescale"]
    em_gt, lp_gt = pool_gt(data.emitter, factor), pool_gt(data.light_pattern, factor)
    emitter, emitter_var = pred["emitter"], pred["emitter_var"]
    if mode == "selfsup":
        emitter, emitter_var, _ = affine_align(emitter, em_gt, emitter_var)
    return {
        "emitter": (emitter, em_gt, emitter_var),
        "lp": (pred["light_pattern"], lp_gt, pred["lp_var"]),
        "rec": (pred["rec"], data.raw, pred["var_rec"]),
        "noise": (data.raw, data.clean, pred["var_rec"], data.sigma),
    }


@pytest.mark.parametrize("mode", MODES)
def test_calibrate_writes_the_core_metrics_curves_and_figures(trained, tiny_data, tmp_path, mode):
    out = tmp_path / "calibration"
    cfg = CalibrateParams(n_bins=8, n_bootstrap=50)
    result = calibrate_model(trained[mode], tiny_data, out, cfg)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert set(on_disk) == {"emitter_affine_fit", "settings", "test", "recalibrated", "sigma_scale"}
    assert on_disk["emitter_affine_fit"] is (mode == "selfsup")
    assert on_disk["settings"]["n_bins"] == 8 and on_disk["settings"]["n_test_samples"] == 2

    test = _expected_components(trained[mode], tiny_data, "test", mode)
    val = _expected_components(trained[mode], tiny_data, "val", mode)
    for comp in ("emitter", "lp", "rec"):
        pred, ref, var = test[comp]
        expected = metrics.calibration_metrics(pred, ref, var, component=comp, n_bins=8)
        for key, value in expected.items():
            assert on_disk["test"][key] == pytest.approx(value, rel=1e-4, abs=1e-7, nan_ok=True), key
        # σ-scaling: fitted on val, applied to test.
        vp, vr, vv = val[comp]
        s2 = metrics.fit_sigma_scale(vp.astype(np.float64) - vr, vv)
        assert on_disk["sigma_scale"][comp] == pytest.approx(s2, rel=1e-4)
        recal = metrics.calibration_metrics(pred, ref, metrics.apply_sigma_scale(var, s2),
                                            component=comp, n_bins=8)
        for key, value in recal.items():
            assert on_disk["recalibrated"][key] == pytest.approx(value, rel=1e-4, abs=1e-7,
                                                                 nan_ok=True), key
        # The curve CSV is the core calibration_curve on the same arrays.
        curve = cc.calibration_curve(pred.astype(np.float64) - ref, var, n_bins=8,
                                          n_bootstrap=50, seed=cfg.seed)
        rows = list(csv.DictReader((out / "curves" / f"calib_{comp}.csv").read_text().splitlines()))
        assert len(rows) == len(curve.mean_var)
        np.testing.assert_allclose([float(r["mean_var"]) for r in rows], curve.mean_var, rtol=1e-4)
        np.testing.assert_allclose([float(r["mean_sq_err"]) for r in rows], curve.mean_sq_err,
                                   rtol=1e-4)
        np.testing.assert_allclose([float(r["ci_high"]) for r in rows], curve.ci_high, rtol=1e-4)
        assert sum(int(r["count"]) for r in rows) == pred.size
        assert (out / "curves" / f"calib_{comp}_recalibrated.csv").is_file()
        for fig in ("calib", "pit", "sparsification"):
            assert_png_not_blank(out / "figures" / f"{fig}_{comp}.png")
    assert_png_not_blank(out / "figures" / "uq_vs_noise.png")

    raw, clean, var_rec, sigma = test["noise"]
    noise = metrics.calibration_metrics(raw, clean, var_rec, component="noise", n_bins=8)
    assert on_disk["test"]["noise_zms"] == pytest.approx(noise["noise_zms"], rel=1e-4)
    std = np.sqrt(var_rec.astype(np.float64))
    assert on_disk["test"]["noise_std_ratio"] == pytest.approx(std.mean() / sigma.mean(), rel=1e-4)
    assert on_disk["test"]["noise_std_pearson"] == pytest.approx(
        np.corrcoef(std.ravel(), sigma.ravel())[0, 1], rel=1e-4)

    summary = (out / "summary.md").read_text()
    assert f"# Calibration report: {mode} model" in summary
    for row in ("| emitter | GT |", "| lp | GT |", "| rec | raw input frames |", "σ-scaled"):
        assert row in summary, row
    assert ("Emitter affine fit: yes" in summary) is (mode == "selfsup")


# -- disabled targets ------------------------------------------------------------------------


def test_disabled_targets_produce_no_files(tiny_data, tmp_path):
    """An (untrained) model with only an LP variance: no emitter/PSF/std files, no emitter
    calibration; LP, rec and deconv are still reported."""
    p = tiny_params(uq={"targets": ["lp"]})
    model = build_model(p.model, p.uq, 9, 0)
    spec = model_spec(p.model, p.uq, 9) | {"mode": "sup", "train": p.train_sup.model_dump(mode="json"),
                                           "hr_factor": p.simulate.hr_factor}
    save_model(model, spec, tmp_path / "model")
    export_debug(tmp_path / "model", tiny_data, tmp_path / "debug", ExportDebugParams(n_samples=1))
    calibrate_model(tmp_path / "model", tiny_data, tmp_path / "calibration",
                    CalibrateParams(n_bins=5, n_bootstrap=20))

    debug = {f.name for f in (tmp_path / "debug").iterdir()}
    for present in ("lp_std.png", "lp_std_hist.png", "lp_nll.png", "rec_std.png", "deconv_std.png",
                    "emitter_pred_gt.png", "psf_pred_gt.png", "lp_std.tif", "emitter_mean.tif"):
        assert present in debug, present
    for comp in ("emitter", "psf"):
        assert not {f for f in debug if f.startswith(f"{comp}_std") or f == f"{comp}_nll.png"}
    with np.load(tmp_path / "debug" / "uq_uncertainty.npz") as npz:
        assert not {k for k in npz.files if k.startswith(("emitter_std", "emitter_logvar", "psf_std"))}

    cal = tmp_path / "calibration"
    assert sorted(f.name for f in (cal / "figures").iterdir()) == [
        "calib_lp.png", "calib_rec.png", "pit_lp.png", "pit_rec.png", "sparsification_lp.png",
        "sparsification_rec.png", "uq_vs_noise.png"]
    assert sorted(f.name for f in (cal / "curves").iterdir()) == [
        "calib_lp.csv", "calib_lp_recalibrated.csv", "calib_rec.csv", "calib_rec_recalibrated.csv"]
    result = json.loads((cal / "metrics.json").read_text())
    assert not [k for k in result["test"] if k.startswith("emitter_")]
    assert set(result["sigma_scale"]) == {"lp", "rec"}
    assert "| emitter |" not in (cal / "summary.md").read_text()


# -- stand-alone tools -----------------------------------------------------------------------


def test_plot_metrics_curves_tool(trained, tmp_path):
    plot_metrics_curves.main(["--metrics_csv", str(trained["sup"] / "metrics.csv"),
                              "--out", str(tmp_path)])
    written = sorted(f.name for f in tmp_path.iterdir())
    for name in ("loss.png", "nll.png", "calib_ratio.png", "zms.png", "corr.png", "std.png"):
        assert name in written, written
        assert_png_not_blank(tmp_path / name)


def test_plot_calibration_curves_tool(trained, tmp_path):
    wait_for_figures()
    root = trained["selfsup"] / "debug_samples"
    plot_calibration_curves.main(["--root", str(root), "--out", str(tmp_path), "--n_bins", "5"])
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "calib_emitter.png", "calib_lp.png", "calib_rec.png"]
    for f in tmp_path.iterdir():
        assert_png_not_blank(f)
    with pytest.raises(SystemExit, match="no uq_uncertainty.npz"):
        plot_calibration_curves.main(["--root", str(tmp_path)])


# -- helpers ---------------------------------------------------------------------------------


def test_choose_samples_is_seeded_sorted_and_distinct():
    a = choose_samples(10, 4, seed=1)
    np.testing.assert_array_equal(a, choose_samples(10, 4, seed=1))
    assert len(set(a.tolist())) == 4 and list(a) == sorted(a)
    assert not np.array_equal(a, choose_samples(10, 4, seed=2))
    np.testing.assert_array_equal(choose_samples(3, 8, seed=0), [0, 1, 2])


def test_affine_align_recovers_scale_and_offset_per_sample(rng):
    gt = rng.random((3, 8, 8))
    a, b = np.array([2.0, 0.5, -1.0]), np.array([0.1, -0.3, 1.0])
    pred = (gt - b[:, None, None]) / a[:, None, None]
    var = rng.random((3, 8, 8)) + 0.1
    aligned, scaled, coef = affine_align(pred, gt, var)
    np.testing.assert_allclose(aligned, gt, atol=1e-12)
    np.testing.assert_allclose(coef, np.stack([a, b], axis=1), atol=1e-12)
    np.testing.assert_allclose(scaled, var * a[:, None, None] ** 2)


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_pool_psf_keeps_the_sum_and_the_centre(factor):
    k = 15
    yy, xx = np.indices((k, k)) - k // 2
    psf = np.exp(-(xx**2 + yy**2) / 8.0)[None]
    psf /= psf.sum()
    pooled = pool_psf(psf, factor, size=9)
    assert pooled.shape == (1, 9, 9)
    assert pooled.sum() == pytest.approx(1.0, abs=1e-6)
    if factor % 2:  # odd factors keep the centre exactly: the pooled kernel is symmetric
        np.testing.assert_allclose(pooled[0], pooled[0, ::-1, ::-1], atol=1e-7)
        assert np.unravel_index(pooled[0].argmax(), (9, 9)) == (4, 4)
