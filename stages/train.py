"""DVC stage ``train`` (a matrix over ``mode``): train the self-supervised or the supervised model.

- ``selfsup``: the NLL of the raw frames under the propagated Var(rec); ground truth is used only
  for validation metrics;
- ``sup``: the latent components against their ground truth (emitter, light pattern).

    python -m stages.train --mode selfsup|sup [--params params.yaml] [--data data/sim] [--out models/<mode>]
"""

from __future__ import annotations

from pathlib import Path

from simuq_core.config import params_hash
from simuq_core.io import read_json, write_json
from simuq_core.tracking import flatten_params, open_run
from simuq_core.workflows.train import run_training
from stages._common import base_parser, load_params, setup_logging


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("train a model")
    parser.add_argument("--mode", choices=("selfsup", "sup"), required=True,
                        help="selfsup: raw-frame likelihood; sup: against the latent ground truth")
    parser.add_argument("--data", default="data/sim", help="dataset folder (default: %(default)s)")
    parser.add_argument("--out", default=None, help="model folder (default: models/<mode>)")
    args = parser.parse_args(argv)
    mode = args.mode
    params = load_params(args.params)
    setup_logging()
    out = Path(args.out or f"models/{mode}")
    dumped = params.model_dump(mode="json")
    logged = flatten_params({"simulate": dumped["simulate"], "uq": dumped["uq"],
                             "model": dumped["model"], "train": dumped[f"train_{mode}"]})
    logged["dataset_sha256"] = read_json(Path(args.data) / "dataset.json")["content_sha256"]
    with open_run(out, stage=f"train@{mode}", mode=mode, params_hash=params_hash(params),
                  new=True, params=logged) as tracker:
        metrics = run_training(mode, params, args.data, out, progress=not args.quiet,
                               on_rows=tracker.log_rows)
        write_json(out / "metrics.json", {"test": metrics})
        tracker.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        for name in ("metrics.csv", "metrics.json", "model.json"):
            tracker.log_artifact(out / name)


if __name__ == "__main__":
    main()
