"""Stage / command ``finetune``: self-supervised fine-tuning of a trained model on real raw SIM
acquisitions (crops streamed from disk), with GT-free validation on a held-out part.

    python -m stages.finetune --model models/selfsup --input "examples/rdl_sim_microtubules/*.mrc" \\
        --out models/finetune_real [--params params.yaml] [--cache .cache/raw_index]

Settings: the ``finetune`` section of the params file (:class:`simuq_core.finetune.FinetuneParams`;
absent = defaults). Writes ``model.npz`` / ``model.json`` (usable by ``predict``), ``metrics.csv``,
``checkpoints/`` and ``metrics.json`` (pre-trained vs fine-tuned validation, skipped files). Exit
status: 0 done, 2 usage errors (no model, no usable input, invalid params).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from simuq_core.config import format_validation_error
from stages._common import base_parser, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/selfsup", help="pre-trained model folder")
    parser.add_argument("--input", nargs="+", required=True, 
                        help="raw stacks: files, folders or quoted globs")
    parser.add_argument("--out", default="models/finetune_real", help="output model folder")
    parser.add_argument("--cache", default=".cache/raw_index", help="index cache (patterns, normalisation)")
    args = parser.parse_args(argv)
    from simuq_core.finetune import FinetuneParams, run_finetuning
    from simuq_core.validation import InputError

    # Only this stage's section is read, so the command also runs on a params file whose schema
    # does not list ``finetune`` yet.
    try:
        raw = yaml.safe_load(Path(args.params).read_text()) if Path(args.params).exists() else {}
        params = FinetuneParams.model_validate((raw or {}).get("finetune") or {})
    except ValidationError as exc:
        print(f"error: {format_validation_error(exc, args.params)}", file=sys.stderr)
        return 2
    if not (Path(args.model) / "model.json").exists():
        print(f"error: {args.model}: no model.json (train a model first)", file=sys.stderr)
        return 2
    setup_logging()
    try:
        metrics = run_finetuning(args.model, args.input, args.out, params, args.cache,
                                 progress=not args.quiet)
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
