"""A throw-away copy of the project (tiny profile) as its own git + DVC repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests._tiny import tiny_raw

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_tiny_repo(dest: Path) -> Path:
    """Copy the pipeline code into ``dest``, tiny params, ``git init`` + ``dvc init``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("simuq_core", "stages"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_raw(), sort_keys=False))
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")
    run(["git", "init", "-q"], dest)
    run([str(BIN / "dvc"), "init", "-q"], dest)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], dest)
    return dest


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("GIT_AUTHOR_NAME", "simuq-test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "simuq-test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def dvc(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd, check)
