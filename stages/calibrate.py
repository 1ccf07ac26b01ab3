"""DVC stage ``calibrate``: the calibration metric suite, curves, PIT, sparsification and
σ-scaling recalibration of a trained model on the test split.

    python -m stages.calibrate --mode sup [--params params.yaml] [--model models/sup]
        [--data data/sim] [--out reports/calibration/sup]
"""

from __future__ import annotations

import logging

from simuq_core.reports.synthetic import calibrate_model
from stages._common import model_run, report_args

log = logging.getLogger("simuq.calibrate")


def main(argv: list[str] | None = None) -> None:
    args, params, model_dir, out = report_args(__doc__.splitlines()[0], "reports/calibration", argv)
    with model_run(model_dir, "calibrate", args.mode) as tracker:
        result = calibrate_model(model_dir, args.data, out, params.calibrate)
        tracker.log_metrics({f"calib_{k}": v for k, v in result["test"].items()})
        tracker.log_metrics({f"calib_recal_{k}": v for k, v in result["recalibrated"].items()})
        tracker.log_artifact(out, "calibration")
    shown = {k: round(v, 4) for k, v in result["test"].items() if k.endswith(("_zms", "_calib_ratio"))}
    log.info("wrote %s: %s", out, shown)


if __name__ == "__main__":
    main()
