"""Stage / command ``predict``: reconstruct raw 9-frame SIM stacks with uncertainty maps.

Applies a trained model to any number of TIFF or MRC / DeltaVision stacks of any size (output
layout, normalisation and validation: ``simuq_core/inference/files.py``). ``--pattern auto`` (default)
estimates the illumination of MRC / DV files (real acquisitions) blind over the full field, with a
frame-order diagnosis, and that of TIFFs with the network's own estimate; ``blind`` / ``model``
force one.

    python -m stages.predict --model models/selfsup --input "data/sim/test/*.tif" \\
        --out data/predict/selfsup [--tile 32] [--overlap 8] [--norm-offset 100] [--device cpu] \\
        [--pattern auto|model|blind] [--period-hint 2.87]

Exit status: 0 all inputs done, 1 some failed (each named in the report), 2 usage errors (no
inputs, no model, invalid params). Tile default: ``predict.tile``, else the model's training crop
if recorded, else the ``simulate`` crop of the params file.
"""

from __future__ import annotations

import sys

from stages._common import base_parser, load_params, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/selfsup", help="model folder (default: %(default)s)")
    parser.add_argument("--input", nargs="+", required=True,
                        help="TIFF / MRC / DV files, folders or quoted glob patterns")
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per input)")
    parser.add_argument("--tile", type=int, default=None, help="tile size, camera px")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap, camera px")
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass")
    parser.add_argument("--norm-offset", type=float, default=None, help="camera offset (ADU)")
    parser.add_argument("--wiener", action="store_true", default=None,
                        help="also write the classical Wiener SIM image and its noise std")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="JAX platform (default: GPU when available)")
    parser.add_argument("--context", choices=("auto", "image", "crops", "tile"), default=None,
                        help="GroupNorm statistics / PSF: pooled over the image, the mean of "
                             "tile-sized crops' own, or per tile (default predict.context; auto = crops for "
                             "a fine-tuned model, else image)")
    parser.add_argument("--pattern", choices=("auto", "model", "blind"), default="auto",
                        help="illumination estimate: blind full-field (real data), the network's, or "
                             "auto = blind for MRC/DV files (default)")
    parser.add_argument("--epistemic", type=int, default=None, metavar="N",
                        help="MC-dropout passes for epistemic / total std maps (default: "
                             "epistemic.n_samples when the model has dropout; 0 = off)")
    parser.add_argument("--ood-reference", default=None,
                        help="reference.json of the epistemic stage: flag inputs outside the "
                             "training distribution (default: the model folder's "
                             "ood_reference.json, written by fine-tuning, if any)")
    parser.add_argument("--period-hint", type=float, default=None,
                        help="blind search only near this pattern period (camera px; default "
                             "microscope.pattern_period_px)")
    parser.add_argument("--frame-order", choices=("angle_major", "phase_major"), default=None,
                        help="raw frame order (default microscope.frame_order, else angle-major)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except SystemExit as exc:  # load_params exits with the message; usage errors are status 2
        print(exc, file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("tile", args.tile), ("overlap", args.overlap),
                                   ("batch_size", args.batch_size),
                                   ("norm_offset", args.norm_offset), ("wiener", args.wiener),
                                   ("period_hint", args.period_hint), ("frame_order", args.frame_order))
                 if v is not None}
    cfg = params.predict.model_copy(update=overrides)
    setup_logging()

    import jax

    if args.device != "auto":
        jax.config.update("jax_platforms", args.device)
    try:
        jax.devices()
    except RuntimeError as exc:
        print(f"error: --device {args.device}: {exc}", file=sys.stderr)
        return 2
    from simuq_core.inference.run import PredictUsageError, RunOptions, run_predict

    options = RunOptions(context=args.context, pattern=args.pattern, epistemic=args.epistemic,
                         ood_reference=args.ood_reference, progress=not args.quiet)
    try:
        report = run_predict(args.model, args.input, args.out, params.model_copy(update={"predict": cfg}),
                             options)
    except PredictUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    inputs = report.results
    failed = report.failed
    n_warn = sum(bool(r.warnings) for r in report.results)
    print(f"predict: {len(inputs) - len(failed)}/{len(inputs)} inputs reconstructed into {args.out} "
          f"(tile {report.model['tile']}, overlap {report.model['overlap']}, "
          f"{report.model['device']}); {n_warn} with warnings")
    for r in failed:
        print(f"  FAILED {r.error}")
    for r in report.results:
        ood = (r.summary or {}).get("ood") or {}
        if ood.get("flagged"):
            print(f"  OUT OF DISTRIBUTION {ood['message']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
