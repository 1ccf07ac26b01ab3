"""Build ``reports/ablation.md`` and ``reports/ablation.csv`` from every MLflow run.

    python -m stages.compare [--out reports/ablation]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simuq_core.tracking import tracking_uri, write_ablation_report
from stages._common import setup_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/ablation", help="path stem (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    stem = Path(args.out)
    n = write_ablation_report(stem.with_suffix(".md"), stem.with_suffix(".csv"))
    print(f"{n} runs from {tracking_uri()} -> {stem.with_suffix('.md')}, {stem.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
