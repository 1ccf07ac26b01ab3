"""Experiment tracking with MLflow (imported lazily: it costs ~2 s).

One MLflow run per trained model. The training stage creates it and stores its id beside the model
(``<model_dir>/mlflow_run.json``); ``export_debug`` and ``calibrate`` re-open the same run, so one
run holds params, curves, figures and calibration numbers.

Store: ``MLFLOW_TRACKING_URI`` when set (e.g. a team server), else the embedded SQLite database
``sqlite:///<repo root>/mlflow.db``; a SQLite store keeps its artifacts in ``mlruns/`` beside its
database file (``<repo root>/mlruns`` for the default one). The repo root is
``DVC_ROOT`` (so ``dvc exp run --temp/--queue`` runs land in the same database) or the cwd.

Failure policy (documented in the README): tracking never costs a result. If the store cannot be
opened or written, the stage logs a warning and goes on without tracking (``SIMUQ_TRACKING=off``
disables it outright, ``SIMUQ_TRACKING=required`` turns the warning into an error). A stage that
raises marks its run ``FAILED`` before the exception propagates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from simuq_core.io import atomic_file, read_json, write_json

__all__ = ["EXPERIMENT_NAME", "RUN_ID_FILE", "Tracker", "flatten_params", "open_run", "run_id_of",
           "tracking_uri"]

log = logging.getLogger("simuq.tracking")

EXPERIMENT_NAME = "simuq"
RUN_ID_FILE = "mlflow_run.json"
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT", os.getcwd())).resolve()


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def _sqlite_artifact_root(uri: str) -> str | None:
    """For an embedded SQLite store, ``mlruns/`` beside its database file (the default store's
    ``<repo root>/mlruns``; a store elsewhere keeps its artifacts with it); ``None`` (the server's
    choice) for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()


def flatten_params(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"uq": {"targets": ["emitter", "lp"]}} -> {"uq.targets": "emitter,lp"}`` (strings)."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten_params(value, f"{name}.")
        elif isinstance(value, list | tuple):
            out[name] = ",".join(str(v) for v in value) if value else "none"
        else:
            out[name] = str(value)
    return out


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Tracker:
    """Logging into one run; every method is a no-op when tracking is disabled."""

    def __init__(self, client: Any | None, run_id: str | None):
        self.client, self.run_id = client, run_id

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if not self.enabled:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must not kill a stage
            if os.environ.get("SIMUQ_TRACKING") == "required":
                raise
            log.warning("MLflow: could not %s (%s); continuing without it", what, exc)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Finite numeric values, one ``log_batch`` call per 900 metrics."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()
                 if isinstance(v, int | float) and math.isfinite(float(v))]
        for i in range(0, len(items), _BATCH):
            self._guard("log metrics", self.client.log_batch, self.run_id,
                        metrics=items[i:i + _BATCH], synchronous=True)

    def log_rows(self, rows: list[Mapping[str, Any]]) -> None:
        """``metrics.csv``-style rows: numeric columns at the row's ``step``."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = []
        for row in rows:
            step = int(row.get("step", 0))
            for k, v in row.items():
                if k in ("kind", "epoch", "step") or not isinstance(v, int | float):
                    continue
                if math.isfinite(float(v)):
                    items.append(Metric(k, float(v), ts, step))
        for i in range(0, len(items), _BATCH):
            self._guard("log metrics", self.client.log_batch, self.run_id,
                        metrics=items[i:i + _BATCH], synchronous=True)

    def log_params(self, params: Mapping[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 90):
            self._guard("log params", self.client.log_batch, self.run_id,
                        params=items[i:i + 90], synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        self._guard("set tags", self.client.log_batch, self.run_id,
                    tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        path = Path(path)
        if not path.exists():
            return
        fn = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
        self._guard(f"log artifact {path}", fn, self.run_id, str(path), artifact_path)


def _client_and_experiment(root: Path):
    import mlflow  # lazy: ~2 s

    uri = tracking_uri(root)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT_NAME)
    if exp is None:
        location = _sqlite_artifact_root(uri)
        try:
            exp_id = client.create_experiment(EXPERIMENT_NAME, artifact_location=location)
        except Exception:  # a parallel stage created it first
            exp = client.get_experiment_by_name(EXPERIMENT_NAME)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    return client, exp_id


def _standard_tags(root: Path, stage: str, mode: str, params_hash: str) -> dict[str, str]:
    return {
        "git_commit": _git_commit(root),
        "dvc_stage": stage,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", "none"),
        "params_hash": params_hash,
        "mode": mode,
    }


@contextlib.contextmanager
def open_run(
    model_dir: str | Path,
    *,
    stage: str,
    mode: str,
    params_hash: str,
    new: bool = False,
    params: Mapping[str, str] | None = None,
) -> Iterator[Tracker]:
    """Create (``new=True``, the training stage) or re-open the model's run; yield a
    :class:`Tracker`. The run is ``RUNNING`` inside the block, ``FINISHED`` after it and
    ``FAILED`` if the block raises."""
    model_dir = Path(model_dir)
    root = repo_root()
    tracker = Tracker(None, None)
    if os.environ.get("SIMUQ_TRACKING", "on") != "off":
        try:
            client, exp_id = _client_and_experiment(root)
            tags = _standard_tags(root, stage, mode, params_hash)
            run_file = model_dir / RUN_ID_FILE
            known = read_json(run_file).get("run_id") if run_file.exists() else None
            if new or known is None:
                run = client.create_run(exp_id, run_name=f"{mode}-{tags['dvc_exp_name']}",
                                        tags=tags)
                run_id = run.info.run_id
                write_json(run_file, {"run_id": run_id, "tracking_uri": tracking_uri(root)})
            else:
                run_id = known
                client.update_run(run_id, status="RUNNING")
                client.set_tag(run_id, f"{stage}.git_commit", tags["git_commit"])
            tracker = Tracker(client, run_id)
            if new:
                tracker.log_params(params or {})
        except Exception as exc:  # noqa: BLE001
            if os.environ.get("SIMUQ_TRACKING") == "required":
                raise
            log.warning("MLflow tracking disabled: cannot open the store %s (%s)",
                        tracking_uri(root), exc)
            tracker = Tracker(None, None)
    if new and not tracker.enabled:  # the stage's declared output exists either way
        write_json(model_dir / RUN_ID_FILE, {"run_id": None, "tracking_uri": None})
    try:
        yield tracker
    except BaseException:
        if tracker.enabled:
            with contextlib.suppress(Exception):
                tracker.client.set_terminated(tracker.run_id, status="FAILED")
        raise
    if tracker.enabled:
        tracker._guard("finish the run", tracker.client.set_terminated, tracker.run_id,
                       status="FINISHED")


def run_id_of(model_dir: str | Path) -> str | None:
    path = Path(model_dir) / RUN_ID_FILE
    return json.loads(path.read_text()).get("run_id") if path.exists() else None


# Columns of the ablation table: run identity first, then these metrics when a run has them.
ABLATION_METRICS = (
    "test_rec_zms", "test_rec_coverage_95", "test_noise_corr", "test_emitter_psnr",
    "test_widefield_psnr", "test_psnr_gain", "test_emitter_std_p95_over_mean",
    "test_emitter_zms", "test_emitter_coverage_95", "test_lp_zms", "test_lp_coverage_95",
    "calib_emitter_zms", "calib_lp_zms", "calib_rec_zms", "calib_emitter_coverage_95",
    "calib_lp_coverage_95", "calib_rec_coverage_95",
)


def ablation_table(root: Path | None = None):
    """One row per run of the ``simuq`` experiment: mode, DVC experiment, ``uq.targets`` and the
    key calibration / reconstruction metrics (``pandas.DataFrame``, newest first)."""
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(tracking_uri(root))
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT_NAME],
                              order_by=["attributes.start_time DESC"])
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "mode", "dvc_exp_name", "uq_targets", "status"])
    table = pd.DataFrame({
        "run_id": runs["run_id"].str[:8],
        "mode": runs.get("tags.mode"),
        "dvc_exp_name": runs.get("tags.dvc_exp_name"),
        "uq_targets": runs.get("params.uq.targets"),
        "pool_var": runs.get("params.uq.pool_var"),
        "status": runs["status"],
        "start_time": runs["start_time"].dt.strftime("%Y-%m-%d %H:%M"),
    })
    for name in ABLATION_METRICS:
        col = f"metrics.{name}"
        if col in runs:
            table[name] = runs[col].round(4)
    return table


def write_ablation_report(out_md: Path, out_csv: Path, root: Path | None = None) -> int:
    """Write the ablation table as Markdown and CSV (atomically); return the number of runs."""

    table = ablation_table(root)
    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    lines = ["# simuq ablation: one row per MLflow run", "",
             f"Store: `{tracking_uri(root)}`; experiment `{EXPERIMENT_NAME}`. Metrics prefixed "
             "`test_` come from the training stage (test split), `calib_` from the calibrate stage.",
             ""]
    cols = list(table.columns)
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for _, row in table.iterrows():
        lines.append("| " + " | ".join("" if pd_isna(v) else str(v) for v in row) + " |")
    with atomic_file(out_md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return len(table)


def pd_isna(value: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(value))
