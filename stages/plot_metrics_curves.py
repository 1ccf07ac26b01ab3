"""Loss and metric curves of a training run from its ``metrics.csv`` (a tool, not a DVC stage).

    python -m stages.plot_metrics_curves --metrics_csv models/sup/metrics.csv [--out DIR]

Writes ``loss.png``, ``nll.png``, ``calib_ratio.png``, ``zms.png``, ``corr.png``, ``std.png``,
``psnr.png`` (those with data) into ``--out`` (default: ``plots/`` beside the CSV).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from simuq_core.reports.plots import plot_training_curves
from stages._common import setup_logging

log = logging.getLogger("simuq.plot_metrics_curves")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics_csv", required=True, help="a training run's metrics.csv")
    parser.add_argument("--out", help="output folder (default: plots/ beside the CSV)")
    args = parser.parse_args(argv)
    setup_logging()
    csv_path = Path(args.metrics_csv)
    if not csv_path.is_file():
        raise SystemExit(f"error: {csv_path}: no such file")
    written = plot_training_curves(csv_path, args.out or csv_path.parent / "plots")
    log.info("wrote %d figure(s): %s", len(written), ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
