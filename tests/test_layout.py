"""The library's structure: one-way layers between subpackages, and DVC stage deps that name
exactly the code each stage can import (so an edit re-runs only the stages that can see it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top: a module may import only from its own subpackage or one listed before it.
LAYERS = ["optics", "io", "logs", "config", "tracking", "pattern", "baselines", "simulation", "realdata",
          "uncertainty", "network", "evaluation", "training", "inference", "reports", "workflows", "cli"]


def _module_file(module: str) -> Path:
    path = ROOT / (module.replace(".", "/") + ".py")
    return path if path.exists() else ROOT / module.replace(".", "/") / "__init__.py"


def _imports(module: str) -> set[str]:
    """Every ``simuq_core`` / ``stages`` module ``module`` imports, at any depth of its body."""
    path = _module_file(module)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.ImportFrom) and node.module
                and node.module.split(".")[0] in ("simuq_core", "stages")):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").exists()}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in ("simuq_core", "stages")}
    return found


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += sorted(_imports(m))
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
    return seen


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "simuq_core" and len(parts) > 1 else None


def test_subpackages_import_only_lower_layers():
    packages = {p.name for p in (ROOT / "simuq_core").iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in (ROOT / "simuq_core").glob("*.py") if p.stem != "__init__"}
    assert packages | modules == set(LAYERS), "every subpackage and top-level module has a layer"
    violations = []
    for path in sorted((ROOT / "simuq_core").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mine = _package(module)
        for target in _imports(module):
            theirs = _package(target)
            if mine and theirs and LAYERS.index(theirs) > LAYERS.index(mine):
                violations.append(f"{module} -> {target}")
    assert not violations


def _stage_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if isinstance(d, str) and d.startswith(("simuq_core", "stages/"))}


def _expected_deps(stage_module: str) -> set[str]:
    deps = set()
    for module in _closure(stage_module):
        parts = module.split(".")
        if parts[0] == "stages" and len(parts) > 1:
            deps.add(f"stages/{parts[1]}.py")
        elif len(parts) > 1:
            deps.add(f"simuq_core/{parts[1]}" if (ROOT / "simuq_core" / parts[1]).is_dir()
                     else f"simuq_core/{parts[1]}.py")
    return deps


def _stages(dvc_file: Path):
    for name, stage in yaml.safe_load(dvc_file.read_text())["stages"].items():
        cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
        modules = {c.split("python -m ")[1].split()[0] for c in cmds}
        assert len(modules) == 1, name
        yield name, stage, modules.pop()


@pytest.mark.parametrize("dvc_file", ["dvc.yaml", "pipelines/real/dvc.yaml", "pipelines/biosr/dvc.yaml"])
def test_stage_deps_are_the_code_each_stage_imports(dvc_file):
    """Every stage depends on exactly the subpackages (and stage files) its command imports: a
    missing one would leave a stage stale after an edit, an extra one re-runs it for nothing."""
    for name, stage, module in _stages(ROOT / dvc_file):
        have, need = _stage_deps(stage), _expected_deps(module)
        assert have == need, (f"{dvc_file} stage {name}: add {sorted(need - have)}, "
                              f"remove {sorted(have - need)}")
