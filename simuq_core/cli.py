"""The ``simuq`` command: what a microscopist runs, from any folder.

    simuq predict  --model MODEL --input "stacks/*.tif" --out results   reconstruct, with uncertainty
    simuq finetune --model MODEL --input "stacks/*.tif" --out my_model  self-supervised fine-tuning
    simuq measure  --input "stacks/*.tif" --out measured.json           camera and pattern of the stacks
    simuq info     MODEL                                                what a model is and was trained on

Every subcommand has ``--help``. ``--params FILE`` is optional: a YAML file holding only the
sections a user wants to change (e.g. ``microscope``, ``predict``); without it the defaults of the
schema apply. The DVC stages ``python -m stages.predict`` / ``finetune`` / ``measure`` are these
same commands with ``params.yaml`` as their default params file. Exit status: 0 done, 1 some inputs
failed (each named), 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simuq_core.config import MicroscopeParams, ParamsError, parse_section, read_sections
from simuq_core.logs import setup_logging

__all__ = ["finetune_main", "info_main", "main", "measure_main", "predict_main"]

# Beside a model: the predict settings it was made for (microscope, predict and baseline sections),
# read by ``simuq predict`` when no ``--params`` is given.
MODEL_SETTINGS = "predict.yaml"

PREDICT_HELP = """Stage / command ``predict``: reconstruct raw 9-frame SIM stacks with uncertainty maps.

Applies a trained model to any number of TIFF or MRC / DeltaVision stacks of any size (output
layout, normalisation and validation: ``simuq_core/inference/files.py``). ``--pattern auto`` (default)
uses the instrument's wave vectors when the model carries them (a model fine-tuned on acquisitions
with a clear pattern), fitting only each file's phases; else it estimates the illumination of
MRC / DV files (real acquisitions) blind over the full field, with a frame-order diagnosis, and
that of TIFFs with the network's own estimate; ``instrument`` / ``blind`` / ``model`` force one.

    python -m stages.predict --model models/selfsup --input "data/sim/test/*.tif" \\
        --out data/predict/selfsup [--tile 32] [--overlap 8] [--norm-offset 100] [--device cpu] \\
        [--pattern auto|instrument|model|blind] [--period-hint 2.87]

Exit status: 0 all inputs done, 1 some failed (each named in the report), 2 usage errors (no
inputs, no model, invalid params). Tile default: ``predict.tile``, else the model's training crop
if recorded, else the ``simulate`` crop of the params file.
"""
FINETUNE_HELP = """Stage / command ``finetune``: self-supervised fine-tuning of a trained model on real \
raw SIM
acquisitions (crops streamed from disk), with GT-free validation on a held-out part.

    python -m stages.finetune --model models/selfsup [--input "examples/rdl_sim_microtubules/*.mrc"] \\
        --out models/finetune_real [--params params.yaml] [--cache .cache/raw_index]

Settings: the ``finetune`` section of the params file (:class:`simuq_core.config.FinetuneParams`;
absent = defaults); the inputs are ``--input`` or else ``finetune.inputs``. Writes ``model.npz`` /
``model.json`` (usable by ``predict``), ``metrics.csv``, ``checkpoints/``, ``metrics.json``
(pre-trained vs fine-tuned validation, skipped files) and ``mlflow_run.json``: the MLflow run
(params, training curves, held-out metrics as ``pretrained_*`` / ``finetuned_*``, artifacts) that
the ``real_report`` stage re-opens. Exit status: 0 done, 2 usage errors (no model, no usable
input, invalid params).
"""
MEASURE_HELP = """Stage / command ``measure``: read a lab's raw SIM stacks and write the \
``simulate`` override that
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


def _parser(command: str, help_text: str, params_default: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"simuq {command}", description=help_text,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=params_default,
                        help="params file with the sections to change (default: "
                             f"{params_default or 'none: the schema defaults'})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _inputs(given: list[str] | None, section: list[str]) -> list[str]:
    """``--input``, else the ``finetune.inputs`` of the params file; empty (with the message
    printed) when neither names any file."""
    inputs = list(given or section)
    if not inputs:
        print("error: no input: give --input or finetune.inputs in the params file", file=sys.stderr)
    return inputs


def _predict_parser(params_default: str | None) -> argparse.ArgumentParser:
    parser = _parser("predict", PREDICT_HELP, params_default)
    parser.add_argument("--model", default="models/selfsup", help="model folder (default: %(default)s)")
    parser.add_argument("--input", nargs="+", required=True,
                        help="TIFF / MRC / DV files, folders or quoted glob patterns")
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per input)")
    parser.add_argument("--tile", type=int, default=None, help="tile size, camera px")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap, camera px")
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass")
    parser.add_argument("--norm-offset", type=float, default=None, help="camera offset (ADU)")
    parser.add_argument("--wiener", action="store_true", default=None,
                        help="also write the classical Wiener SIM image and its noise std")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="JAX platform (default: GPU when available)")
    parser.add_argument("--context", choices=("auto", "image", "crops", "tile"), default=None,
                        help="GroupNorm statistics / PSF: pooled over the image, the mean of "
                             "tile-sized crops' own, or per tile (default predict.context; auto = crops for "
                             "a fine-tuned model, else image)")
    parser.add_argument("--instrument", default=None, metavar="JSON",
                        help="the instrument's wave vectors from this file (simuq measure's output, or a "
                             "fine-tuned model.json) in place of the model's")
    parser.add_argument("--pattern", choices=("auto", "model", "blind", "instrument"), default="auto",
                        help="illumination estimate: the instrument's wave vectors a fine-tuned model "
                             "carries (phases fitted per file), blind full-field (real data), the "
                             "network's; auto (default) = instrument if the model carries one, else "
                             "blind for MRC/DV files, else the network's")
    parser.add_argument("--epistemic", type=int, default=None, metavar="N",
                        help="MC-dropout passes for epistemic / total std maps of a model trained with "
                             "dropout (default predict.mc_passes = 0: off, each pass costs a network pass)")
    parser.add_argument("--ood-reference", default=None,
                        help="reference.json of the epistemic stage: flag inputs outside the "
                             "training distribution (default: the model folder's "
                             "ood_reference.json, written by fine-tuning, if any)")
    parser.add_argument("--period-hint", type=float, default=None,
                        help="blind search only near this pattern period (camera px; default "
                             "microscope.pattern_period_px)")
    parser.add_argument("--frame-order", choices=("angle_major", "phase_major"), default=None,
                        help="raw frame order (default microscope.frame_order, else angle-major)")
    return parser


def predict_main(argv: list[str] | None = None, params_default: str | None = None) -> int:
    """``simuq predict`` / ``python -m stages.predict`` (module docstring)."""
    parser = _predict_parser(params_default)
    args = parser.parse_args(argv)
    own = Path(args.model) / MODEL_SETTINGS
    if args.params is None and own.is_file():  # the model folder's own predict settings
        args.params = str(own)
        print(f"simuq predict: settings from {own} (--params overrides)", file=sys.stderr)
    try:
        raw, predict, baseline, epistemic = read_sections(args.params, "predict", "baseline", "epistemic")
        simulate = parse_section(raw, "simulate", str(args.params)) if raw.get("simulate") else None
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("tile", args.tile), ("overlap", args.overlap),
                                   ("batch_size", args.batch_size),
                                   ("norm_offset", args.norm_offset), ("wiener", args.wiener),
                                   ("period_hint", args.period_hint), ("frame_order", args.frame_order))
                 if v is not None}
    cfg = predict.model_copy(update=overrides)
    setup_logging()

    import jax

    if args.device != "auto":
        jax.config.update("jax_platforms", args.device)
    try:
        jax.devices()
    except RuntimeError as exc:
        print(f"error: --device {args.device}: {exc}", file=sys.stderr)
        return 2
    from simuq_core.inference.run import PredictUsageError, RunOptions, enable_compile_cache, run_predict

    enable_compile_cache()
    options = RunOptions(context=args.context, pattern=args.pattern, epistemic=args.epistemic,
                         instrument=args.instrument,
                         ood_reference=args.ood_reference, progress=not args.quiet)
    try:
        report = run_predict(args.model, args.input, args.out, cfg, baseline, epistemic_seed=epistemic.seed,
                             fallback_tile=min(simulate.lr_h, simulate.lr_w) if simulate else None,
                             options=options)
    except PredictUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    inputs = report.results
    failed = report.failed
    n_warn = sum(bool(r.warnings) for r in report.results)
    print(f"predict: {len(inputs) - len(failed)}/{len(inputs)} inputs reconstructed into {args.out} "
          f"(tile {report.model['tile']}, overlap {report.model['overlap']}, "
          f"{report.model['device']}); {n_warn} with warnings")
    for r in failed:
        print(f"  FAILED {r.error}")
    for r in report.results:
        ood = (r.summary or {}).get("ood") or {}
        if ood.get("flagged"):
            print(f"  OUT OF DISTRIBUTION {ood['message']}")
    _pattern_figures(report, args.model)
    return 1 if failed else 0


def _pattern_figures(report, model_dir: str) -> None:
    """``pattern.png`` in every output folder with a full-field pattern estimate; a figure that
    cannot be drawn is a warning, never a failed prediction."""
    from simuq_core.reports.pattern import write_pattern_figure

    optics = json.loads((Path(model_dir) / "model.json").read_text())["model"]["optics"]
    for r in report.results:
        if not r.ok or r.output is None:
            continue
        try:
            write_pattern_figure(r.output, float(optics["na"]), float(optics["wavelength_nm"]))
        except Exception as exc:  # a figure must not fail the prediction it describes
            print(f"  warning: {r.output}: no pattern.png ({type(exc).__name__}: {exc})", file=sys.stderr)


def finetune_main(argv: list[str] | None = None, params_default: str | None = None) -> int:
    """``simuq finetune`` / ``python -m stages.finetune`` (module docstring)."""
    parser = _parser("finetune", FINETUNE_HELP, params_default)
    parser.add_argument("--model", default="models/selfsup", help="pre-trained model folder")
    parser.add_argument("--input", nargs="+", default=None,
                        help="raw stacks: files, folders or quoted globs (default: finetune.inputs)")
    parser.add_argument("--out", default="models/finetune_real", help="output model folder")
    parser.add_argument("--cache", default=".cache/raw_index", help="index cache (patterns, normalisation)")
    args = parser.parse_args(argv)
    from simuq_core.config import params_hash
    from simuq_core.io import read_json
    from simuq_core.realdata.checks import InputError
    from simuq_core.tracking import flatten_params, open_run
    from simuq_core.workflows.finetune import run_finetuning

    # Only this stage's section is read, so the command also runs on a params file without the
    # sections the training stages need.
    try:
        raw_params, params = read_sections(args.params, "finetune")
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (Path(args.model) / "model.json").exists():
        print(f"error: {args.model}: no model.json (train a model first)", file=sys.stderr)
        return 2
    inputs = _inputs(args.input, params.inputs)
    if not inputs:
        return 2
    setup_logging()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pre_spec = read_json(Path(args.model) / "model.json")
    logged = flatten_params({"finetune": params.model_dump(mode="json") | {"inputs": list(inputs)},
                             "model": pre_spec["model"], "uq": pre_spec["uq"]})
    logged["pretrained_model"] = str(args.model)
    logged["pretrained_params_hash"] = str(pre_spec.get("params_hash", ""))
    try:
        with open_run(out, stage="finetune", mode="finetune", params_hash=params_hash(params), new=True,
                      params=logged) as tracker:
            metrics = run_finetuning(args.model, inputs, out, params, args.cache, progress=not args.quiet,
                                     on_rows=tracker.log_rows)
            for when in ("pretrained", "finetuned"):
                tracker.log_metrics({f"{when}_{k}": v for k, v in metrics[when].items()})
            tracker.log_metrics({"n_acquisitions": metrics["index"]["n_acquisitions"],
                                 "n_skipped": metrics["index"]["n_skipped"]})
            write_model_settings(out, raw_params, params, args.params)
            for name in ("metrics.csv", "metrics.json", "model.json", MODEL_SETTINGS):
                tracker.log_artifact(out / name)
    except (InputError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    after, index = metrics["finetuned"], metrics["index"]
    print(f"finetune: {index['n_acquisitions']} acquisitions ({index['n_skipped']} skipped), "
          f"{metrics['train']['steps']} steps -> {args.out}; held-out rec ZMS "
          f"{metrics['pretrained']['rec_zms']:.3f} -> {after['rec_zms']:.3f}, coverage 68/95 "
          f"{after['rec_coverage_68']:.3f}/{after['rec_coverage_95']:.3f}")
    for item in index["skipped"]:
        print(f"  SKIPPED {item['reason']}")
    return 0


def write_model_settings(model_dir: str | Path, raw: dict, finetune, source: str | None = None) -> Path:
    """``model_dir/predict.yaml``: what ``simuq predict`` needs to read this model's data as it was
    fine-tuned on, so a model folder needs no params file. The params file's ``microscope``,
    ``predict`` and ``baseline`` sections as typed (the microscope fills predict's copies); without
    a microscope section, ``predict`` gets the fine-tuning's frame order, offset, period hint,
    measured OTF and frame equalisation. ``raw``: the params file as typed (``source``: its name)."""
    import yaml

    from simuq_core.io import write_text

    settings = {k: raw[k] for k in ("microscope", "predict", "baseline") if raw.get(k) is not None}
    if "microscope" not in settings:
        own = {"frame_order": finetune.frame_order, "norm_offset": finetune.norm_offset,
               "period_hint": finetune.period_hint, "otf_file": finetune.otf_file,
               "equalize_frames": finetune.equalize_frames}
        settings["predict"] = dict(settings.get("predict") or {}) | own
    path = Path(model_dir) / MODEL_SETTINGS
    write_text(path, f"# predict's settings for this model (from {source or 'the defaults'}); simuq "
               "predict reads it when no --params is given.\n" + yaml.safe_dump(settings, sort_keys=False))
    return path


def _sections(path: str):
    """``(microscope or None, finetune, model optics)`` of the params file; ParamsError if invalid."""
    raw, finetune, model = read_sections(path, "finetune", "model")
    micro = raw.get("microscope")  # validated by read_sections
    return (MicroscopeParams.model_validate(micro) if micro is not None else None), finetune, model.optics


def measure_main(argv: list[str] | None = None, params_default: str | None = None) -> int:
    """``simuq measure`` / ``python -m stages.measure`` (module docstring)."""
    parser = _parser("measure", MEASURE_HELP, params_default)
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
    inputs = _inputs(args.input, finetune.inputs)
    if not inputs:
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



def info_main(argv: list[str] | None = None) -> int:
    """``simuq info MODEL``: mode, microscope, training data, uncertainty, OOD reference."""
    parser = argparse.ArgumentParser(prog="simuq info", description=info_main.__doc__)
    parser.add_argument("model", help="model folder (holds model.json)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    from simuq_core.inference.ood import OOD_REFERENCE_FILE
    from simuq_core.io import read_json

    folder = Path(args.model)
    if not (folder / "model.json").is_file():
        print(f"error: {folder}: no model.json (not a simuq model folder)", file=sys.stderr)
        return 2
    spec = read_json(folder / "model.json")
    model = spec["model"]
    ood = folder / OOD_REFERENCE_FILE
    summary = {
        "model": str(folder), "mode": spec.get("mode"), "params_hash": spec.get("params_hash"),
        "microscope": model.get("optics"), "rescale": model.get("rescale"), "n_frames": spec.get("n_frames"),
        "light_pattern": model.get("light_pattern"), "train_crop": spec.get("train_crop"),
        "uq_targets": spec["uq"]["targets"], "camera_noise": spec["uq"]["obs_noise"],
        "dropout": model.get("dropout", 0.0), "dataset_sha256": spec.get("dataset_sha256"),
        "finetune": {k: v for k, v in (spec.get("finetune") or {}).items() if k != "params"} or None,
        "ood_reference": str(ood) if ood.is_file() else None,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    for key, value in summary.items():
        print(f"{key:>14}: {value}")
    if summary["ood_reference"] is None:
        print("warning: no OOD reference beside the model: predict will not check its inputs "
              "(give --ood-reference)", file=sys.stderr)
    return 0


COMMANDS = {"predict": predict_main, "finetune": finetune_main, "measure": measure_main, "info": info_main}


def main(argv: list[str] | None = None) -> int:
    """The ``simuq`` console script (module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
