"""DVC stage ``simulate``: write the synthetic SIM dataset to ``data/sim``.

    python -m stages.simulate [--params params.yaml] [--out data/sim]
"""

from __future__ import annotations

import logging

from simuq_core.dataset import write_dataset
from stages._common import base_parser, load_params, setup_logging

log = logging.getLogger("simuq.simulate")


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/sim", help="dataset folder (default: %(default)s)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setup_logging()
    manifest = write_dataset(params.simulate, args.out, progress=not args.quiet)
    log.info("wrote %s: %s samples, digest %s", args.out, manifest["counts"],
             manifest["content_sha256"][:12])


if __name__ == "__main__":
    main()
