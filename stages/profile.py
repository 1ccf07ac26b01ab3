"""Apply a profile: write ``params.yaml`` = the base params with the profile's overlay merged in.

    python -m stages.profile gpu|tiny|PATH.yaml [--base params.yaml] [--out params.yaml]

A profile (``profiles/<name>.yaml``) holds only the keys that differ from ``params.yaml``; an
overlay key the base lacks, or a merged value the schema rejects, stops with the dotted key named
and nothing written. The output is written atomically. Comments of the base are not kept: go back
with ``git checkout params.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from simuq_core.config import ParamsError, apply_profile
from simuq_core.io import write_text

PROFILES = Path(__file__).resolve().parents[1] / "profiles"


def profile_path(name: str) -> Path:
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else PROFILES / f"{name}.yaml"


def merged_params(profile: str, base: str | Path = "params.yaml") -> dict:
    """The base params file with ``profile`` (a name in ``profiles/`` or a path) applied."""
    overlay_path, base_path = profile_path(profile), Path(base)
    for p in (overlay_path, base_path):
        if not p.is_file():
            raise ParamsError(f"{p}: no such file")
    return apply_profile(yaml.safe_load(base_path.read_text()),
                         yaml.safe_load(overlay_path.read_text()) or {}, source=str(overlay_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="profile name in profiles/ (tiny, gpu) or a YAML path")
    parser.add_argument("--base", default="params.yaml", help="base params file (default: %(default)s)")
    parser.add_argument("--out", default="params.yaml", help="output file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        merged = merged_params(args.profile, args.base)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    header = (f"# params.yaml with profile {profile_path(args.profile).name} applied "
              f"(python -m stages.profile); the schema: simuq_core/config/\n")
    write_text(args.out, header + yaml.safe_dump(merged, sort_keys=False, width=100))
    print(f"profile {args.profile}: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
