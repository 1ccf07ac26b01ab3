"""params.yaml validation: every profile loads; bad values and typos fail naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simuq_core.config import ParamsError, apply_profile, parse_params

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = sorted((ROOT / "profiles").glob("*.yaml"))


def _default() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_params_validate():
    assert parse_params(_default(), source="params.yaml").simulate.n_frames == 9


@pytest.mark.parametrize("path", OVERLAYS, ids=lambda p: p.name)
def test_every_profile_is_a_valid_overlay_of_the_default(path):
    """A profile holds only what differs from params.yaml: every key it sets exists there, at
    least one value differs, none repeats the default, and the merge validates."""
    overlay = yaml.safe_load(path.read_text())
    merged = apply_profile(_default(), overlay, str(path))
    assert parse_params(merged).simulate.n_frames == 9

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from leaves(v, prefix + k + ".")
            else:
                yield prefix + k, v

    default = dict(leaves(_default()))
    changed = dict(leaves(overlay))
    assert changed and all(default[k] != v for k, v in changed.items()), path.name


def test_profile_keys_the_default_lacks_are_named():
    with pytest.raises(ParamsError, match=r"simulate.n_sampels: not in the base params file"):
        apply_profile(_default(), {"simulate": {"n_sampels": 3}}, "profiles/bad.yaml")
    with pytest.raises(ParamsError, match=r"simulate.n_samples"):
        apply_profile(_default(), {"simulate": {"n_samples": 0}}, "profiles/bad.yaml")


def test_profile_command_writes_the_merged_params(tmp_path, capsys):
    from stages.profile import main

    out = tmp_path / "params.yaml"
    assert main(["gpu", "--base", str(ROOT / "params.yaml"), "--out", str(out)]) == 0
    gpu = parse_params(yaml.safe_load(out.read_text()))
    assert gpu.simulate.lr_h == 80 and gpu.uq == parse_params(_default()).uq
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {widht: 3}\n")
    assert main([str(bad), "--base", str(ROOT / "params.yaml"), "--out", str(tmp_path / "x.yaml")]) == 2
    assert "model.widht" in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize(
    "section,key,value,needle",
    [
        ("simulate", "lr_h", -4, "simulate.lr_h"),
        ("simulate", "n_samples", 0, "simulate.n_samples"),
        ("microscope", "pattern_period_px", 1.5, "microscope.pattern_period_px"),
        ("microscope", "frame_order", "phase_first", "microscope.frame_order"),
        ("simulate", "n_sample", 10, "simulate.n_sample: unknown key"),
        ("simulate", "hr_factor", "two", "simulate.hr_factor"),
        ("uq", "targets", ["emitter", "noise"], "uq.targets.1"),
        ("uq", "logvar_min", 5.0, "logvar_min"),
        ("uq", "pool_var", "approx", "uq.pool_var"),
    ],
)
def test_bad_params_fail_with_the_key_named(section, key, value, needle):
    raw = _default()
    raw[section][key] = value
    with pytest.raises(ParamsError) as info:
        parse_params(raw, source="params.yaml")
    assert needle in str(info.value)
    assert str(info.value).startswith("params.yaml: invalid parameters")


def test_nested_typo_and_unknown_section_are_named():
    raw = _default()
    raw["simulate"]["noise"]["photon"] = 5
    raw["simulat"] = {}
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    msg = str(info.value)
    assert "simulate.noise.photon: unknown key" in msg and "simulat: unknown key" in msg


def test_period_given_as_fraction_of_cutoff():
    raw = _default()
    raw["simulate"]["pattern_period_lr"] = None
    raw["simulate"]["pattern_k_frac"] = 0.6
    sim = parse_params(raw).simulate
    # cut-off 2NA/λ = 0.333 cycles per 62.6 nm pixel -> period 1/(0.6*0.333) = 5.0 LR px
    assert sim.period_lr == pytest.approx(5.0, rel=0.01)
    raw["simulate"]["pattern_period_lr"] = 5.0
    with pytest.raises(ParamsError, match="exactly one"):
        parse_params(raw)


def test_stage_cli_exits_with_the_file_and_key_named(tmp_path):
    raw = _default()
    raw["simulate"]["lr_w"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = subprocess.run(
        [sys.executable, "-m", "stages.simulate", "--params", str(bad), "--out",
         str(tmp_path / "sim")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode != 0
    assert f"{bad}: invalid parameters" in out.stderr and "simulate.lr_w" in out.stderr
    assert not (tmp_path / "sim").exists()
