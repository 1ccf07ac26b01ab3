"""The ``simuq`` console script: subcommands, help, and a prediction from a folder that holds no
params file (the schema's defaults and the model's own record apply)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

from simuq_core.cli import main
from simuq_core.simulation.samples import sample_rng, simulate_sample
from tests._tiny import tiny_params

ROOT = Path(__file__).resolve().parents[1]


def test_help_and_unknown_commands(capsys):
    assert main(["--help"]) == 0
    assert "simuq predict" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "simuq info" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--help"])
    assert stop.value.code == 0 and "--model" in capsys.readouterr().out


def test_info_describes_a_model_and_names_a_missing_one(selfsup_run, capsys, tmp_path):
    assert main(["info", str(selfsup_run.model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mode"] == "selfsup" and info["n_frames"] == 9 and info["microscope"]["na"] > 0
    assert "emitter" in info["uq_targets"]
    assert main(["info", str(tmp_path)]) == 2
    assert "no model.json" in capsys.readouterr().err


def test_predict_runs_from_a_folder_without_params(selfsup_run, tmp_path):
    """From an empty working folder, no ``--params``: the console script reconstructs a stack
    (tile: the model's training crop) and says so in its report; a missing input is status 2."""
    work = tmp_path / "work"
    work.mkdir()
    raw = simulate_sample(sample_rng(0, "test", 0),
                          tiny_params(simulate={"lr_h": 32, "lr_w": 32}).simulate).raw
    tifffile.imwrite(work / "stack.tif", raw)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "simuq_core.cli", "predict", "--model", str(selfsup_run.model_dir),
           "--input", "stack.tif", "--out", "results", "--quiet"]
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((work / "results" / "stack" / "summary.json").read_text())
    assert summary["tiling"]["tile"] == 16 and "emitter" in summary["maps"]
    assert set(summary["timings_s"]) >= {"read", "pattern", "network", "write"}
    missing = subprocess.run(cmd[:-5] + ["--input", "nothing.tif", "--out", "r2"], cwd=work, env=env,
                             capture_output=True, text=True)
    assert missing.returncode in (1, 2) and "nothing.tif" in missing.stdout + missing.stderr


def test_shipped_model_predicts_out_of_the_box(tmp_path):
    """The shipped model is complete: ``simuq info`` reads it, and ``simuq predict`` with no
    params file runs on a crop of the shipped acquisition with the model's own settings and OOD
    reference, which finds the crop within its training distribution."""
    from simuq_core.realdata.reader import read_acquisition

    model = ROOT / "pretrained" / "mt_finetuned"
    assert main(["info", str(model)]) == 0
    frames = read_acquisition(ROOT / "examples" / "rdl_sim_microtubules" / "MT.mrc").frames[0]
    tifffile.imwrite(tmp_path / "crop.tif", frames[:, 96:160, 96:160].astype("float32"))
    rc = main(["predict", "--model", str(model), "--input", str(tmp_path / "crop.tif"), "--out",
               str(tmp_path / "r"), "--quiet", "--pattern", "blind"])
    summary = json.loads((tmp_path / "r" / "crop" / "summary.json").read_text())
    # a crop of the data it was fine-tuned on: checked on both data terms, and within
    assert rc == 0 and summary["ood"]["terms"] == ["input", "misfit"] and summary["ood"]["flagged"] is False
    assert (tmp_path / "r" / "crop" / "maps.ome.tif").is_file()
