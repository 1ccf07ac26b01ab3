"""What every stage does first: find the repo, read and validate ``params.yaml``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from simuq_core.config import Params, ParamsError, parse_params, read_sections  # noqa: F401 (stages import it from here)
from simuq_core.logs import setup_logging  # noqa: F401 (stages import it from here)


def repo_root() -> Path:
    """``DVC_ROOT`` when run by DVC (also under ``dvc exp run --temp``), else the cwd."""
    return Path(os.environ.get("DVC_ROOT", os.getcwd()))


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate the params file; exit with a message naming the bad keys."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        sys.exit(f"error: {path}: params file not found")
    except yaml.YAMLError as exc:
        sys.exit(f"error: {path}: not valid YAML: {exc}")
    try:
        return parse_params(raw, source=str(path))
    except ParamsError as exc:
        sys.exit(f"error: {exc}")


def model_run(model_dir: str | os.PathLike, stage: str, mode: str):
    """Re-open the MLflow run of a trained model (its id is stored beside the model)."""
    from simuq_core.io import read_json
    from simuq_core.tracking import open_run

    spec = read_json(Path(model_dir) / "model.json")
    return open_run(model_dir, stage=stage, mode=mode, params_hash=spec.get("params_hash", ""))


def report_args(description: str, default_out: str, argv: list[str] | None):
    """Arguments shared by the per-model report stages (``export_debug``, ``calibrate``).

    Returns ``(args, params, model_dir, out_dir)`` with the ``<mode>`` defaults filled in.
    """
    parser = base_parser(description)
    parser.add_argument("--mode", choices=("selfsup", "sup"), required=True)
    parser.add_argument("--model", help="model folder (default: models/<mode>)")
    parser.add_argument("--data", default="data/sim", help="dataset folder (default: %(default)s)")
    parser.add_argument("--out", help=f"output folder (default: {default_out}/<mode>)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setup_logging()
    return (args, params, args.model or f"models/{args.mode}",
            Path(args.out or f"{default_out}/{args.mode}"))


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser
