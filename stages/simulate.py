"""DVC stage ``simulate``: write the synthetic SIM dataset to ``data/sim``.

    python -m stages.simulate [--params params.yaml] [--out data/sim] [--match measured.json]

``--match``: the ``override`` written by ``python -m stages.measure`` from a lab's raw stacks
(pattern period and modulation, photons, background, read noise, camera gain and offset) replaces
those entries of the ``simulate`` section, so the simulated data look like that microscope's.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from simuq_core.simulation.dataset import write_dataset
from stages._common import base_parser, load_params, setup_logging

log = logging.getLogger("simuq.simulate")


def matched_simulation(simulate, path: str | Path):
    """The ``simulate`` section with the measured ``override`` of ``path`` merged over it
    (:func:`simuq_core.config.merge_override`) and validated; a clear error names the file."""
    from pydantic import ValidationError

    from simuq_core.config import SimulateParams, format_validation_error, merge_override
    from simuq_core.io import read_json

    path = Path(path)
    try:
        override = read_json(path)["override"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"error: --match {path}: expected the JSON of `python -m stages.measure` "
                         f"with an 'override' mapping ({type(exc).__name__}: {exc})") from None
    try:
        return SimulateParams.model_validate(merge_override(simulate.model_dump(mode="json"), override))
    except ValidationError as err:
        raise SystemExit(format_validation_error(err, f"{path} (override merged over simulate)")) from None


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/sim", help="dataset folder (default: %(default)s)")
    parser.add_argument("--match", default=None,
                        help="measured.json of `python -m stages.measure`: simulate like those stacks")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setup_logging()
    cfg = params.simulate if args.match is None else matched_simulation(params.simulate, args.match)
    if args.match is not None:
        log.info("matched to %s: period %.3f px, modulation %.2f, %.3g photons (range %.3g), background "
                 "%.3g, read noise %.3g e-", args.match, cfg.period_lr, cfg.modulation, cfg.noise.photons,
                 cfg.noise.photon_range, cfg.noise.background_photons, cfg.noise.read_noise_e)
    manifest = write_dataset(cfg, args.out, progress=not args.quiet)
    log.info("wrote %s: %s samples, digest %s", args.out, manifest["counts"],
             manifest["content_sha256"][:12])


if __name__ == "__main__":
    sys.exit(main())
