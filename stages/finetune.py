"""Stage / command ``finetune``: self-supervised fine-tuning of a trained model on real raw SIM
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

from __future__ import annotations

import sys
from pathlib import Path

from simuq_core.config import ParamsError
from stages._common import base_parser, read_sections, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
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
        _, params = read_sections(args.params, "finetune")
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (Path(args.model) / "model.json").exists():
        print(f"error: {args.model}: no model.json (train a model first)", file=sys.stderr)
        return 2
    inputs = args.input or params.inputs
    if not inputs:
        print("error: no input: give --input or finetune.inputs in the params file", file=sys.stderr)
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
            for name in ("metrics.csv", "metrics.json", "model.json"):
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


if __name__ == "__main__":
    sys.exit(main())
