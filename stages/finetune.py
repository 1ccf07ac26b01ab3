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

from simuq_core.cli import finetune_main


def main(argv: list[str] | None = None) -> int:
    return finetune_main(argv, params_default="params.yaml")


if __name__ == "__main__":
    sys.exit(main())
