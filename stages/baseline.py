"""DVC stage ``baseline``: classical generalised Wiener SIM with its exact noise std on the
simulated test split (Wiener parameter chosen on val), the reference every SIM user compares with.

    python -m stages.baseline [--params params.yaml] [--data data/sim] [--out reports/baseline]
        [--maps data/baseline]
"""

from __future__ import annotations

import logging
from pathlib import Path

from stages._common import base_parser, load_params, setup_logging

log = logging.getLogger("simuq.baseline")


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/sim", help="dataset folder (default: %(default)s)")
    parser.add_argument("--out", default="reports/baseline", help="metrics + summary folder")
    parser.add_argument("--maps", default="data/baseline", help="reconstruction + std maps folder")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setup_logging()
    from simuq_core.io import write_json, write_npz, write_text
    from simuq_core.reports.comparison import baseline_report, baseline_summary
    from simuq_core.tracking import open_run

    out, maps = Path(args.out), Path(args.maps)
    out.mkdir(parents=True, exist_ok=True)
    result = baseline_report(args.data, params.model, params.baseline)
    write_npz(maps / "test.npz", **result["test"])
    write_json(out / "metrics.json", result["metrics"])
    write_text(out / "summary.md", baseline_summary(result["metrics"]))
    with open_run(out, stage="baseline", mode="wiener", params_hash="", new=True,
                  params={f"baseline.{k}": str(v) for k, v in params.baseline.model_dump().items()}
                  ) as tracker:
        tracker.log_metrics({f"baseline_{k.replace('=', '_')}": v
                             for k, v in result["metrics"].items()})
        tracker.log_artifact(out, "baseline")
    m = result["metrics"]
    log.info("Wiener SIM (w=%g): PSNR %.2f dB (widefield %.2f); noise ZMS %.4f, coverage95 %.3f",
             m["wiener_w"], m["psnr_wiener"], m["psnr_widefield"], m["noise_zms"],
             m["noise_coverage_95"])


if __name__ == "__main__":
    main()
