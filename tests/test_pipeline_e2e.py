"""End to end on the tiny profile, in a temporary git + DVC repo: `dvc repro` of the whole
pipeline writes every report; DVC sees the metrics and plots; every trained model has one MLflow
run holding training curves and calibration numbers; an MLflow server on loopback serves them over
REST; queued `dvc exp run --queue -S` variants of `uq.targets` (one worker) add tagged runs."""

import json
import os
import socket
import subprocess
import time
import urllib.request

import jax
import pytest

from tests._pipeline import BIN, dvc, make_tiny_repo, run
from tests.test_reports import assert_png_not_blank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _search_runs(port: int) -> list[dict]:
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=simuq",
                                timeout=10) as resp:
        exp_id = json.loads(resp.read())["experiment"]["experiment_id"]
    return _post(f"{base}/runs/search", {"experiment_ids": [exp_id]}).get("runs", [])


@pytest.mark.slow
def test_dvc_repro_of_the_whole_pipeline_writes_the_reports(tmp_path, monkeypatch):
    # The stage processes share the tests' persistent compilation cache (repeat runs compile less;
    # conftest.py chooses the folder).
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SIMUQ_TRACKING", raising=False)
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

    # The classical baseline and the side-by-side comparison.
    base = json.loads((repo / "reports" / "baseline" / "metrics.json").read_text())
    assert {"noise_zms", "psnr_wiener", "psnr_widefield", "bias_share"} <= set(base)
    quality = json.loads((repo / "reports" / "quality" / "metrics.json").read_text())
    for level in ("photons_x1", "photons_x0.1"):
        methods = quality[level]["methods"]
        assert {"widefield", "wiener_sim", "simuq_selfsup", "simuq_sup"} <= set(methods)
        assert all(methods[m]["psnr"] is not None for m in ("wiener_sim", "simuq_selfsup"))
        assert_png_not_blank(repo / "reports" / "quality" / "panels" / f"{level}_0.png")

    # Epistemic uncertainty on the test and OOD splits, and predict's OOD flag against it.
    for mode in ("selfsup", "sup"):
        epi = json.loads((repo / "reports" / "epistemic" / mode / "metrics.json").read_text())
        assert epi["method"] == "mc_dropout" and "ood/combined" in epi["ood_detection"]
        assert (repo / "reports" / "epistemic" / mode / "reference.json").is_file()
    report = json.loads((repo / "data" / "predict" / "selfsup" / "report.json").read_text())
    assert all(item["ood"]["flagged"] in (True, False) for item in report["inputs"])

    # The calibration metrics are DVC metrics and the curves DVC plots.
    shown = json.loads(dvc(["metrics", "show", "--json"], repo).stdout)
    flat = json.dumps(shown)
    assert "reports/calibration/sup/metrics.json" in flat and "emitter_zms" in flat
    dvc(["plots", "show", "-o", str(tmp_path / "plots")], repo)  # writes HTML, renders nothing
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "reports/calibration/selfsup/curves/calib_rec.csv" in html
    assert "calib_emitter.png" in html

    _check_mlflow(repo)

    # Everything is up to date; a calibrate-only params change invalidates only calibrate.
    status = dvc(["status"], repo)
    assert "changed" not in status.stdout, status.stdout
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("n_bootstrap: 200", "n_bootstrap: 50"))
    changed = dvc(["status", "--json"], repo).stdout
    assert set(json.loads(changed)) == {"calibrate@selfsup", "calibrate@sup"}, changed


def _check_mlflow(repo):
    runs_file = {m: json.loads((repo / "models" / m / "mlflow_run.json").read_text())
                 for m in ("selfsup", "sup")}
    assert all(v["run_id"] for v in runs_file.values())
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    # Two queued variants, one worker (the SQLite store takes one writer at a time).
    # (targets: the calibrate group and what it needs; the reports stages after it are covered by
    # the repro above, and skipping them keeps this test short)
    dvc(["exp", "run", "--queue", "-n", "only-emitter", "-S", "uq.targets=[emitter]", "calibrate"],
        repo)
    dvc(["exp", "run", "--queue", "-n", "only-lp", "-S", "uq.targets=[lp]", "calibrate"], repo)
    dvc(["queue", "start", "-j", "1"], repo)
    for _ in range(600):
        status = dvc(["queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert "Failed" not in status, status
    shown = dvc(["exp", "show", "--json"], repo).stdout
    assert "only-emitter" in shown and "only-lp" in shown and "emitter_zms" in shown

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs = None
        for _ in range(120):
            try:
                runs = _search_runs(port)
                break
            except OSError:
                time.sleep(0.5)
        assert runs is not None, "MLflow server did not answer on loopback"
    finally:
        server.terminate()
        server.wait(timeout=30)

    by_id = {r["info"]["run_id"]: r for r in runs}
    for mode, info in runs_file.items():
        r = by_id[info["run_id"]]
        tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
        assert tags["mode"] == mode and r["info"]["status"] == "FINISHED"
        metrics = {m["key"] for m in r["data"]["metrics"]}
        # training curves, test metrics, and the calibrate stage's numbers in the same run
        assert {"loss", "test_rec_zms", "calib_rec_zms", "calib_lp_zms",
                f"quality_photons_x1_simuq_{mode}_psnr"} <= metrics, metrics
    for name, targets in (("only-emitter", "emitter"), ("only-lp", "lp")):
        exp_runs = [r for r in runs if any(t["key"] == "dvc_exp_name" and t["value"] == name
                                           for t in r["data"]["tags"])]
        assert len(exp_runs) == 2, name  # each experiment re-trained both models
        for r in exp_runs:
            params = {p["key"]: p["value"] for p in r["data"]["params"]}
            assert params["uq.targets"] == targets and r["info"]["status"] == "FINISHED"
            assert "calib_rec_zms" in {m["key"] for m in r["data"]["metrics"]}
