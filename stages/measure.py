"""DVC stage ``measure``: the ``simuq measure`` command (:func:`simuq_core.cli.measure_main`,
whose help text says what it does) with ``params.yaml`` as its default params file."""

from __future__ import annotations

import sys

from simuq_core.cli import measure_main


def main(argv: list[str] | None = None) -> int:
    return measure_main(argv, params_default="params.yaml")


if __name__ == "__main__":
    sys.exit(main())
