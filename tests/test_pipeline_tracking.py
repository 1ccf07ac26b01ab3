"""End to end, tiny profile, temporary git + DVC repo: every trained model gets an MLflow run,
an MLflow server on loopback serves them over REST, and `dvc exp run -S` adds a tagged run."""

import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

from tests._pipeline import BIN, dvc, make_tiny_repo, run


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
def test_repro_and_experiments_land_in_mlflow(tmp_path):
    repo = make_tiny_repo(tmp_path / "repo")
    env_clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        dvc(["repro"], repo)
        runs_file = {m: json.loads((repo / "models" / m / "mlflow_run.json").read_text())
                     for m in ("selfsup", "sup")}
        assert all(v["run_id"] for v in runs_file.values())
        assert (repo / "mlflow.db").exists()

        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-qm", "baseline"], repo)
        dvc(["exp", "run", "-n", "only-emitter", "-S", "uq.targets=[emitter]"], repo)

        port = _free_port()
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{repo / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            cwd=repo, env=env_clean, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    finally:
        os.environ.clear()
        os.environ.update(env_clean)

    by_id = {r["info"]["run_id"]: r for r in runs}
    for mode, info in runs_file.items():
        r = by_id[info["run_id"]]
        tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
        assert tags["mode"] == mode and r["info"]["status"] == "FINISHED"
        metrics = {m["key"] for m in r["data"]["metrics"]}
        assert "test_rec_zms" in metrics and "loss" in metrics
    exp_runs = [r for r in runs if any(t["key"] == "dvc_exp_name" and t["value"] == "only-emitter"
                                       for t in r["data"]["tags"])]
    assert len(exp_runs) == 2  # the experiment re-trained both models
    for r in exp_runs:
        params = {p["key"]: p["value"] for p in r["data"]["params"]}
        assert params["uq.targets"] == "emitter"
