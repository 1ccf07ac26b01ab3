"""The common body of the two training stages (they differ only in ``mode``)."""

from __future__ import annotations

from pathlib import Path

from simuq_core.experiment import run_training
from simuq_core.io import write_json
from stages._common import base_parser, load_params, setup_logging


def main(mode: str, argv: list[str] | None = None) -> None:
    parser = base_parser(f"train the {mode} model")
    parser.add_argument("--data", default="data/sim", help="dataset folder (default: %(default)s)")
    parser.add_argument("--out", default=f"models/{mode}", help="model folder (default: %(default)s)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setup_logging()
    metrics = run_training(mode, params, args.data, args.out, progress=not args.quiet)
    write_json(Path(args.out) / "metrics.json", {"test": metrics})
