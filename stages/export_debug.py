"""DVC stage ``export_debug``: debug artifacts (maps, TIFFs, figures) of fixed test samples.

    python -m stages.export_debug --mode sup [--params params.yaml] [--model models/sup]
        [--data data/sim] [--out reports/debug/sup]
"""

from __future__ import annotations

from simuq_core.reports.synthetic import export_debug
from stages._common import model_run, report_args


def main(argv: list[str] | None = None) -> None:
    args, params, model_dir, out = report_args(__doc__.splitlines()[0], "reports/debug", argv)
    with model_run(model_dir, "export_debug", args.mode) as tracker:
        export_debug(model_dir, args.data, out, params.export_debug)
        for path in sorted(out.glob("*.png")) + [out / "uq_summary.json"]:
            tracker.log_artifact(path, "debug")


if __name__ == "__main__":
    main()
