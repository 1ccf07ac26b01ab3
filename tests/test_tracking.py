"""MLflow tracking into a temporary SQLite store."""

import json

import pytest

from simuq_core import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SIMUQ_TRACKING", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    return tmp_path


def _client(root):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_flatten_params_makes_readable_values():
    flat = tracking.flatten_params({"uq": {"targets": ["emitter", "lp"], "beta": 0.5},
                                    "none": {"targets": []}})
    assert flat == {"uq.targets": "emitter,lp", "uq.beta": "0.5", "none.targets": "none"}


def test_a_run_holds_params_tags_step_metrics_and_artifacts(store):
    model_dir = store / "models" / "selfsup"
    model_dir.mkdir(parents=True)
    (model_dir / "note.txt").write_text("hello")
    with tracking.open_run(model_dir, stage="train_selfsup", mode="selfsup", params_hash="abc",
                           new=True, params={"uq.targets": "emitter,lp"}) as tr:
        assert tr.enabled
        tr.log_rows([{"kind": "step", "epoch": 0, "step": 1, "loss": 2.0},
                     {"kind": "step", "epoch": 0, "step": 2, "loss": 1.5},
                     {"kind": "epoch", "epoch": 0, "step": 2, "val_rec_zms": 1.1}])
        tr.log_artifact(model_dir / "note.txt")
    run_id = json.loads((model_dir / tracking.RUN_ID_FILE).read_text())["run_id"]
    # A later stage re-opens the same run.
    with tracking.open_run(model_dir, stage="calibrate", mode="selfsup", params_hash="abc") as tr:
        assert tr.run_id == run_id
        tr.log_metrics({"emitter_zms": 0.97, "bad": float("nan")})
    client = _client(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["uq.targets"] == "emitter,lp"
    for tag, value in (("mode", "selfsup"), ("dvc_stage", "train_selfsup"), ("params_hash", "abc"),
                       ("dvc_exp_name", "exp-test")):
        assert run.data.tags[tag] == value
    assert "git_commit" in run.data.tags
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]
    assert run.data.metrics["emitter_zms"] == pytest.approx(0.97)
    assert "bad" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
    assert (store / "mlruns").is_dir()


def test_a_crashed_stage_leaves_its_run_failed(store):
    model_dir = store / "m"
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.open_run(model_dir, stage="train_sup", mode="sup", params_hash="x",
                               new=True):
            raise RuntimeError("boom")
    run_id = json.loads((model_dir / tracking.RUN_ID_FILE).read_text())["run_id"]
    assert _client(store).get_run(run_id).info.status == "FAILED"


def test_unwritable_store_warns_and_continues(store, monkeypatch, caplog):
    (store / "not_a_dir").write_text("a file where the store's folder should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/not_a_dir/mlflow.db")
    model_dir = store / "m"
    with caplog.at_level("WARNING", logger="simuq.tracking"):
        with tracking.open_run(model_dir, stage="train_sup", mode="sup", params_hash="x",
                               new=True) as tr:
            assert not tr.enabled
            tr.log_metrics({"a": 1.0})  # a no-op, not an error
    assert "MLflow tracking disabled" in caplog.text
    assert json.loads((model_dir / tracking.RUN_ID_FILE).read_text())["run_id"] is None
    monkeypatch.setenv("SIMUQ_TRACKING", "required")
    with pytest.raises(Exception):  # noqa: B017 - whatever MLflow raises for the bad store
        with tracking.open_run(model_dir, stage="train_sup", mode="sup", params_hash="x",
                               new=True):
            pass


def test_compare_builds_one_row_per_run(store):
    for mode, targets in (("selfsup", "emitter,lp,psf"), ("sup", "emitter")):
        with tracking.open_run(store / mode, stage=f"train_{mode}", mode=mode, params_hash="h",
                               new=True, params={"uq.targets": targets}) as tr:
            tr.log_metrics({"test_rec_zms": 1.01, "test_psnr_gain": 1.5})
    n = tracking.write_ablation_report(store / "ablation.md", store / "ablation.csv")
    assert n == 2
    text = (store / "ablation.md").read_text()
    assert "| emitter |" in text and "emitter,lp,psf" in text and "test_rec_zms" in text
    import pandas as pd

    table = pd.read_csv(store / "ablation.csv")
    assert set(table["mode"]) == {"selfsup", "sup"}
    assert (table["test_rec_zms"] == 1.01).all()


def test_the_test_session_logs_into_a_temporary_store(mlflow_store, tmp_path, monkeypatch):
    """conftest.py's session store: a run logged with the library's defaults from the repository
    (no DVC_ROOT, cwd = the repository root) lands, artifacts included, in the temporary store and
    leaves the repository's mlflow.db and mlruns as they were."""
    from pathlib import Path
    from urllib.parse import urlparse

    import mlflow

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("SIMUQ_TRACKING", raising=False)

    def footprint():
        return [(p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None
                for p in (repo / "mlflow.db", repo / "mlruns")]

    before = footprint()
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{mlflow_store / 'mlflow.db'}"
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "note.txt").write_text("hello")
    with tracking.open_run(model_dir, stage="train_sup", mode="sup", params_hash="x",
                           new=True) as tr:
        assert tr.enabled
        tr.log_metrics({"loss": 1.0})
        tr.log_artifact(model_dir / "note.txt")
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(tracking.run_id_of(model_dir))
    assert run.data.metrics["loss"] == 1.0
    assert Path(urlparse(run.info.artifact_uri).path).is_relative_to(mlflow_store)
    assert (Path(urlparse(run.info.artifact_uri).path) / "note.txt").is_file()
    assert footprint() == before
