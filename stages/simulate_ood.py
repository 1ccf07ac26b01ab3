"""DVC stage ``simulate_ood``: out-of-distribution test splits (one per ``ood.shifts`` entry).

    python -m stages.simulate_ood [--params params.yaml] [--out data/ood]
"""

from __future__ import annotations

import logging

from simuq_core.config import ParamsError
from simuq_core.simulation.ood import write_ood_splits
from stages._common import base_parser, load_params, setup_logging

log = logging.getLogger("simuq.simulate_ood")


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/ood", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setup_logging()
    try:  # every override is resolved and checked before the first sample is drawn
        manifest = write_ood_splits(params, args.out, progress=not args.quiet)
    except ParamsError as exc:
        raise SystemExit(f"error: {args.params}: {exc}") from None
    for name, shift in manifest["shifts"].items():
        log.info("wrote %s/%s: %d test samples, digest %s", args.out, name, manifest["n_test"],
                 shift["content_sha256"][:12])


if __name__ == "__main__":
    main()
