"""What every stage does first: find the repo, read and validate ``params.yaml``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from simuq_core.config import Params, ParamsError, parse_params


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


def setup_logging() -> None:
    """INFO for simuq's own loggers only (JAX's INFO chatter stays off)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger("simuq")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser
