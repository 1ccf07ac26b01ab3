"""DVC stage ``finetune``: the ``simuq finetune`` command (:func:`simuq_core.cli.finetune_main`,
whose help text says what it does) with ``params.yaml`` as its default params file."""

from __future__ import annotations

import sys

from simuq_core.cli import finetune_main


def main(argv: list[str] | None = None) -> int:
    return finetune_main(argv, params_default="params.yaml")


if __name__ == "__main__":
    sys.exit(main())
