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

from simuq_core.cli import predict_main


def main(argv: list[str] | None = None) -> int:
    return predict_main(argv, params_default="params.yaml")


if __name__ == "__main__":
    sys.exit(main())
