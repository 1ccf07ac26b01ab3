"""DVC stage ``export_debug``: debug artifacts (maps, TIFFs, figures) of fixed test samples.

    python -m stages.export_debug --mode sup [--params params.yaml] [--model models/sup]
        [--data data/sim] [--out reports/debug/sup]
"""

from __future__ import annotations

from pathlib import Path

from simuq_core.reports import export_debug
from stages._common import base_parser, load_params, model_run, setup_logging


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("selfsup", "sup"), required=True)
    parser.add_argument("--model", help="model folder (default: models/<mode>)")
    parser.add_argument("--data", default="data/sim", help="dataset folder (default: %(default)s)")
    parser.add_argument("--out", help="output folder (default: reports/debug/<mode>)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setup_logging()
    model_dir = args.model or f"models/{args.mode}"
    out = Path(args.out or f"reports/debug/{args.mode}")
    with model_run(model_dir, "export_debug", args.mode) as tracker:
        export_debug(model_dir, args.data, out, params.export_debug)
        for path in sorted(out.glob("*.png")) + [out / "uq_summary.json"]:
            tracker.log_artifact(path, "debug")


if __name__ == "__main__":
    main()
