"""Calibration curves from saved debug folders (a tool, not a DVC stage).

    python -m stages.plot_calibration_curves --root models/sup/debug_samples [--out DIR]
        [--n_bins 15] [--min_count 30]

``--root`` is a folder holding ``uq_uncertainty.npz`` or sub-folders that do (one curve per
sub-folder, e.g. per epoch). Writes ``calib_emitter.png``, ``calib_lp.png``, ``calib_rec.png``
(those with data) into ``--out`` (default: ``calibration/`` beside ``--root``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from simuq_core.reports.calibration import debug_calibration_curves
from stages._common import setup_logging

log = logging.getLogger("simuq.plot_calibration_curves")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="debug folder or folder of debug folders")
    parser.add_argument("--out", help="output folder (default: calibration/ beside --root)")
    parser.add_argument("--n_bins", type=int, default=15, help="equal-count bins (default: 15)")
    parser.add_argument("--min_count", type=int, default=30, help="pixels per bin (default: 30)")
    args = parser.parse_args(argv)
    setup_logging()
    root = Path(args.root)
    try:
        written = debug_calibration_curves(root, args.out or root.resolve().parent / "calibration",
                                           n_bins=args.n_bins, min_count=args.min_count)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    log.info("wrote %d figure(s): %s", len(written), ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
