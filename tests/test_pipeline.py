"""End to end: `dvc repro` of the pipeline on the tiny profile in a fresh git + DVC repo."""

import json

import pytest

from tests._pipeline import dvc, make_tiny_repo


@pytest.mark.slow
def test_dvc_repro_simulate_on_tiny_profile(tmp_path):
    repo = make_tiny_repo(tmp_path / "repo")
    dvc(["repro", "simulate"], repo)
    manifest = json.loads((repo / "data" / "sim" / "dataset.json").read_text())
    assert manifest["counts"] == {"train": 4, "val": 2, "test": 2}
    assert len(list((repo / "data" / "sim" / "train").glob("*.tif"))) == 4
    assert (repo / "dvc.lock").exists()
    # Nothing changed: the stage is cached, a second repro does not re-run it.
    again = dvc(["repro", "simulate"], repo)
    assert "didn't change" in again.stdout or "Stage 'simulate' didn't change" in again.stdout
    # A params change (dvc exp-style override) re-runs it; a typo fails loudly naming the key.
    bad = dvc(["repro", "simulate", "--force"], repo, check=True)
    assert bad.returncode == 0
    (repo / "params.yaml").write_text(
        (repo / "params.yaml").read_text().replace("n_test: 2", "n_tests: 2")
    )
    failed = dvc(["repro", "simulate"], repo, check=False)
    assert failed.returncode != 0
    assert "simulate.n_tests: unknown key" in failed.stdout + failed.stderr
