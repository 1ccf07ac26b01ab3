"""params.yaml validation: every profile loads; bad values and typos fail naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simuq_core.config import ParamsError, parse_params

ROOT = Path(__file__).resolve().parents[1]
PROFILES = [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]


def _default() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_profile_validates(path):
    params = parse_params(yaml.safe_load(path.read_text()), source=str(path))
    assert params.simulate.n_frames == 9


def test_profiles_have_the_same_keys_as_the_default():
    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                out |= keys(v, prefix + k + ".")
        return out

    base = keys(_default())
    for path in PROFILES[1:]:
        assert keys(yaml.safe_load(path.read_text())) == base, path.name


def test_gpu_profile_is_the_original_geometry():
    gpu = parse_params(yaml.safe_load((ROOT / "profiles" / "gpu.yaml").read_text())).simulate
    assert (gpu.lr_h, gpu.lr_w, gpu.hr_factor, gpu.n_samples) == (80, 80, 6, 1000)


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
