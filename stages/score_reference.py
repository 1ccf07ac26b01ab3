"""Stage ``score_reference``: every prediction of a real pipeline scored against a reference
reconstruction of the same field (a high-SNR SIM image), for the lab that has one.

    python -m stages.score_reference --predict pipelines/biosr/predict \\
        --finetuned pipelines/biosr/finetuned --out pipelines/biosr/score \\
        --reference examples/biosr_microtubules_crop/sim_reference.tif \\
        [--params pipelines/biosr/params.yaml] [--twins] [--max-shift 8]

Widefield, the Wiener SIM image and every model's emitter are registered to the reference,
affinely fitted and scored alike (PSNR, SSIM, spectral correlation beyond the widefield
cut-off); every std map is calibrated against it (ZMS, coverage, Spearman, calibration curve).
``--twins`` compares the emitters of the inputs as views of one field (GT-free; it also runs
without a reference). The reference is used for scoring only. Writes ``<out>/metrics.json`` (DVC
metrics), ``<out>/summary.md`` and ``<out>/calibration.png``, and logs them into the fine-tuning
run's MLflow run (``ref_*`` metrics). A reference that shows another field, or has another
shape, is a named warning in all three. Exit status: 0 done, 2 nothing scored.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stages._common import base_parser, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--predict", required=True, help="folder with one predict output per model")
    parser.add_argument("--finetuned", required=True, help="fine-tuned model folder (its MLflow run)")
    parser.add_argument("--reference", default=None,
                        help="reference image (TIFF/MRC, the model grid); without it, --twins only")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--twins", action="store_true", help="the inputs are views of one field")
    parser.add_argument("--max-shift", type=float, default=8.0,
                        help="largest registration shift, model px (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.reference is None and not args.twins:
        parser.error("give --reference, --twins, or both")
    from simuq_core.config import OpticsPrior
    from simuq_core.io import read_json, write_json, write_text
    from simuq_core.reports.reference import (
        numeric_metrics,
        plot_reference_calibration,
        read_reference,
        reference_markdown,
        reference_report,
    )
    from stages._common import model_run, read_sections

    _, ft = read_sections(args.params, "finetune")
    optics = ft.optics or OpticsPrior(**read_json(Path(args.finetuned) / "model.json")["model"]["optics"])
    setup_logging()
    reference = read_reference(args.reference) if args.reference else None
    report = reference_report(args.predict, reference, na=optics.na, wavelength_nm=optics.wavelength_nm,
                              twins=args.twins, max_shift=args.max_shift)
    out = Path(args.out)
    write_json(out / "metrics.json", report)
    write_text(out / "summary.md", reference_markdown(report))
    plot_reference_calibration(out / "calibration.png", report)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    with model_run(args.finetuned, stage="score_reference", mode="finetune") as tracker:
        metrics = numeric_metrics({k: v for k, v in report.items() if k != "warnings"}, "ref_")
        tracker.log_metrics({k: v for k, v in metrics.items() if "_curve_" not in k}
                            | {"ref_n_warnings": float(len(report["warnings"]))})
        for path in (out / "metrics.json", out / "summary.md", out / "calibration.png"):
            tracker.log_artifact(path, "score_reference")
    print(reference_markdown(report))
    scored = any(s["methods"] for s in report["inputs"].values()) or (reference is None and report["twins"])
    return 0 if scored else 2


if __name__ == "__main__":
    sys.exit(main())
