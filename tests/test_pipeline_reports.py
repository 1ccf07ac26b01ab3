"""End to end: `dvc repro` of the whole pipeline, report stages included, on the tiny profile."""

import json

import pytest

from tests._pipeline import ROOT, dvc, make_tiny_repo
from tests.test_reports import assert_png_not_blank


@pytest.mark.slow
def test_dvc_repro_of_the_whole_pipeline_writes_the_reports(tmp_path, monkeypatch):
    # The stage processes share the tests' persistent compilation cache (repeat runs compile less).
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    repo = make_tiny_repo(tmp_path / "repo")
    dvc(["repro"], repo)
    for mode in ("selfsup", "sup"):
        debug = repo / "reports" / "debug" / mode
        for name in ("rec_std", "lp_std", "emitter_std", "psf_std", "deconv_std", "input",
                     "emitter_pred_gt", "lp_pred_gt", "psf_pred_gt", "emitter_nll", "lp_nll",
                     "uq_vs_noise"):
            assert_png_not_blank(debug / f"{name}.png")
        assert (debug / "uq_uncertainty.npz").is_file() and (debug / "rec_std.tif").is_file()
        cal = repo / "reports" / "calibration" / mode
        result = json.loads((cal / "metrics.json").read_text())
        assert {"emitter_zms", "lp_zms", "rec_zms", "noise_std_ratio"} <= set(result["test"])
        assert (cal / "summary.md").is_file()
        for comp in ("emitter", "lp", "rec"):
            assert (cal / "curves" / f"calib_{comp}.csv").is_file()
            assert_png_not_blank(cal / "figures" / f"calib_{comp}.png")

    # The calibration metrics are DVC metrics and the curves DVC plots.
    shown = json.loads(dvc(["metrics", "show", "--json"], repo).stdout)
    flat = json.dumps(shown)
    assert "reports/calibration/sup/metrics.json" in flat and "emitter_zms" in flat
    dvc(["plots", "show", "-o", str(tmp_path / "plots")], repo)  # writes HTML, renders nothing
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "reports/calibration/selfsup/curves/calib_rec.csv" in html
    assert "calib_emitter.png" in html

    # Everything is up to date; a calibrate-only params change invalidates only calibrate.
    status = dvc(["status"], repo)
    assert "changed" not in status.stdout, status.stdout
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("n_bootstrap: 200", "n_bootstrap: 50"))
    changed = dvc(["status", "--json"], repo).stdout
    assert set(json.loads(changed)) == {"calibrate@selfsup", "calibrate@sup"}, changed
