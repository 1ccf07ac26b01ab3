"""DVC stage ``epistemic``: aleatoric, epistemic and total calibration of a model (MC dropout) or
an ensemble of models on the in-distribution test split and every out-of-distribution split,
the image-level OOD score, its ROC AUC, and the thresholds ``predict`` flags inputs with.

    python -m stages.epistemic --mode sup [--model models/sup [models/sup_seed1 ...]]
        [--data data/sim] [--ood data/ood] [--out reports/epistemic/sup] [--params params.yaml]

Several ``--model`` folders form a deep ensemble (same params but the seed; members that differ
in geometry, optics or uncertainty model are refused, naming the member).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from stages._common import base_parser, load_params, model_run, setup_logging

log = logging.getLogger("simuq.epistemic")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("selfsup", "sup"), required=True)
    parser.add_argument("--model", nargs="+", help="model folder(s) (default: models/<mode>)")
    parser.add_argument("--data", default="data/sim", help="dataset folder (default: %(default)s)")
    parser.add_argument("--ood", default="data/ood", help="OOD splits folder (default: %(default)s)")
    parser.add_argument("--out", help="output folder (default: reports/epistemic/<mode>)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setup_logging()
    from simuq_core.reports.epistemic import epistemic_report

    models = args.model or [f"models/{args.mode}"]
    out = Path(args.out or f"reports/epistemic/{args.mode}")
    try:
        with model_run(models[0], "epistemic", args.mode) as tracker:
            result = epistemic_report(models, args.data, args.ood, out, params.epistemic)
            for split, values in result["metrics"].items():
                tag = split.replace("/", "_")
                tracker.log_metrics({f"epi_{tag}_{k}": v for k, v in values.items()})
            for split, values in result["ood_detection"].items():
                tag = split.replace("/", "_")
                tracker.log_metrics({f"ood_{tag}_{k}": v for k, v in values.items()})
            tracker.log_artifact(out, "epistemic")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    det = result["ood_detection"]["ood/combined"]
    test = result["metrics"]["test"]
    log.info("wrote %s: test total emitter ZMS %.3g cov95 %.3g; pooled OOD AUC %.3f, flagged %.2f",
             out, test.get("total_emitter_zms", float("nan")),
             test.get("total_emitter_coverage_95", float("nan")), det["auc_combined"],
             det["flagged_fraction"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
