"""Stage / command ``measure``: read a lab's raw SIM stacks and write the ``simulate`` override that
matches them (pattern period and modulation, photons, background, read noise, gain, offset).

    python -m stages.measure [--params pipelines/real/params.yaml] \\
        [--input "examples/rdl_sim_microtubules/*.mrc"] --out measured.json

Reads the ``microscope`` section (angles, phases, camera gain if stated) and the ``finetune``
section with the microscope's facts copied in (optics, frame order, camera offset, OTF file,
period hint; inputs unless ``--input``). Writes, atomically, ``{"version", "files": [per-file
measurement], "skipped": [{"path", "reason"}], "override": partial simulate override,
"warnings"}`` (:func:`simuq_core.realdata.measure.measure_files`). Exit status: 0 done, 2 invalid params or
no usable input (every file named with its reason).
"""

from __future__ import annotations

import sys

from simuq_core.cli import measure_main


def main(argv: list[str] | None = None) -> int:
    return measure_main(argv, params_default="params.yaml")


if __name__ == "__main__":
    sys.exit(main())
