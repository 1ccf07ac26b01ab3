"""The common body of the two training stages (they differ only in ``mode``)."""

from __future__ import annotations

from pathlib import Path

from simuq_core.config import params_hash
from simuq_core.experiment import run_training
from simuq_core.io import read_json, write_json
from simuq_core.tracking import flatten_params, open_run
from stages._common import base_parser, load_params, setup_logging


def main(mode: str, argv: list[str] | None = None) -> None:
    parser = base_parser(f"train the {mode} model")
    parser.add_argument("--data", default="data/sim", help="dataset folder (default: %(default)s)")
    parser.add_argument("--out", default=f"models/{mode}", help="model folder (default: %(default)s)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setup_logging()
    out = Path(args.out)
    dumped = params.model_dump(mode="json")
    logged = flatten_params({"simulate": dumped["simulate"], "uq": dumped["uq"],
                             "model": dumped["model"], "train": dumped[f"train_{mode}"]})
    logged["dataset_sha256"] = read_json(Path(args.data) / "dataset.json")["content_sha256"]
    with open_run(out, stage=f"train_{mode}", mode=mode, params_hash=params_hash(params),
                  new=True, params=logged) as tracker:
        metrics = run_training(mode, params, args.data, out, progress=not args.quiet,
                               on_rows=tracker.log_rows)
        write_json(out / "metrics.json", {"test": metrics})
        tracker.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        for name in ("metrics.csv", "metrics.json", "model.json"):
            tracker.log_artifact(out / name)
