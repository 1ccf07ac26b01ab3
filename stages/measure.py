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

from simuq_core.config import MicroscopeParams, ParamsError
from stages._common import base_parser, read_sections, setup_logging


def _sections(path: str):
    """``(microscope or None, finetune, model optics)`` of the params file; ParamsError if invalid."""
    raw, finetune, model = read_sections(path, "finetune", "model")
    micro = raw.get("microscope")  # validated by read_sections
    return (MicroscopeParams.model_validate(micro) if micro is not None else None), finetune, model.optics


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", default=None,
                        help="raw stacks: files, folders or quoted globs (default: finetune.inputs)")
    parser.add_argument("--out", default="measured.json", help="output JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    from simuq_core.io import write_json
    from simuq_core.realdata.checks import InputError
    from simuq_core.realdata.measure import measure_files
    from simuq_core.realdata.reader import find_inputs

    try:
        microscope, finetune, model_optics = _sections(args.params)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    inputs = args.input or finetune.inputs
    if not inputs:
        print("error: no input: give --input or finetune.inputs in the params file", file=sys.stderr)
        return 2
    setup_logging()
    optics = finetune.optics or model_optics
    try:
        result = measure_files(
            find_inputs(inputs), na=optics.na, wavelength_nm=optics.wavelength_nm,
            pixel_nm=optics.lr_pixel_nm, n_angles=microscope.n_angles if microscope else 3,
            n_phases=microscope.n_phases if microscope else 3, frame_order=finetune.frame_order,
            offset=finetune.norm_offset, otf_file=finetune.otf_file, period_hint=finetune.period_hint,
            known_gain=microscope.camera_gain_adu_per_e if microscope else None)
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json(args.out, result)
    noise = result["override"]["noise"]
    print(f"measure: {len(result['files'])} acquisitions ({len(result['skipped'])} skipped) -> {args.out}; "
          f"period {result['override']['pattern_period_lr']} px, modulation "
          f"{result['override']['modulation']}, photons {noise['photons']} (range {noise['photon_range']}), "
          f"background {noise['background_photons']} e-, gain {noise['gain_adu_per_e']} ADU/e-")
    for item in result["skipped"]:
        print(f"  SKIPPED {item['reason']}")
    for note in result["warnings"]:
        print(f"  warning: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
