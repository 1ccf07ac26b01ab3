"""DVC stage ``quality``: widefield, classical Wiener SIM and the trained networks, scored side by
side by the same code on larger simulated stacks at several photon budgets (PSNR / SSIM after
registration and an affine fit, spectral correlation beyond the widefield cut-off, FRC between two
noise realisations, decorrelation resolution, checkerboard index).

    python -m stages.quality [--params params.yaml] [--models models] [--out reports/quality]
"""

from __future__ import annotations

import logging
from pathlib import Path

from stages._common import base_parser, load_params, model_run, setup_logging

log = logging.getLogger("simuq.quality")
MODES = ("selfsup", "sup")


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="folder of <mode>/ model folders")
    parser.add_argument("--out", default="reports/quality", help="output folder")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setup_logging()
    from simuq_core.inference.predictor import TiledPredictor, resolve_tile
    from simuq_core.io import write_json, write_text
    from simuq_core.network.store import load_model
    from simuq_core.reports.comparison import quality_report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    networks, dirs = {}, {}
    for mode in MODES:
        model_dir = Path(args.models) / mode
        if not (model_dir / "model.json").exists():
            log.warning("%s: no trained model, left out of the comparison", model_dir)
            continue
        model, spec = load_model(model_dir)
        tile = min(resolve_tile(params.predict.tile, spec, fallback=params.quality.size),
                   params.quality.size)
        networks[f"simuq_{mode}"] = TiledPredictor(model, spec, tile, params.predict.overlap,
                                                   params.predict.batch_size)
        dirs[mode] = model_dir
    result = quality_report(params, networks, out, progress=not args.quiet)
    write_json(out / "metrics.json", result["metrics"])
    write_text(out / "summary.md", result["markdown"])
    for mode, model_dir in dirs.items():
        with model_run(model_dir, "quality", mode) as tracker:
            tracker.log_metrics(result["flat"])
            tracker.log_artifact(out, "quality")
    for line in result["headline"]:
        log.info("%s", line)


if __name__ == "__main__":
    main()
