"""Reading real SIM acquisitions (simuq_core/realdata/reader.py)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from simuq_core.realdata.checks import InputError
from simuq_core.realdata.reader import SaturationWarning, read_acquisition, read_otf_profile

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rdl_sim_microtubules"


def _stack(rng, shape=(9, 40, 48), dtype=np.uint16):
    return (rng.integers(100, 4000, shape)).astype(dtype)


def test_shipped_deltavision_mrc():
    acq = read_acquisition(EXAMPLE / "MT.mrc")
    assert acq.frames.shape == (1, 9, 256, 256) and acq.frames.dtype == np.float32
    assert acq.pixel_nm == pytest.approx(62.6, abs=1e-3)
    assert acq.wavelength_nm == 525.0
    assert acq.source_format == "deltavision" and acq.dtype == "uint16" and acq.layout == "(9,H,W)"
    # The same bytes as the README's plain reading: a 1024-byte header, then [frame, y, x] uint16.
    ref = np.fromfile(EXAMPLE / "MT.mrc", "<u2", offset=1024).reshape(9, 256, 256)
    np.testing.assert_array_equal(acq.frames[0], ref.astype(np.float32))


def test_shipped_otf_profile():
    profile, dk = read_otf_profile(EXAMPLE / "TIRF488_cam1_0_z30_OTF2d.mrc")
    assert profile.shape == (257,) and dk == pytest.approx(0.0312, rel=1e-4)
    assert abs(profile[0]) == pytest.approx(1.0) and abs(profile[-1]) < 0.01


def test_strict_mrc2014(tmp_path, rng):
    data = _stack(rng)
    with mrcfile.new(tmp_path / "a.mrc") as m:
        m.set_data(data)
        m.voxel_size = 626.0  # Å
    acq = read_acquisition(tmp_path / "a.mrc")
    assert acq.source_format == "mrc2014" and acq.pixel_nm == pytest.approx(62.6)
    np.testing.assert_array_equal(acq.frames[0], data)
    with mrcfile.new(tmp_path / "b.mrc") as m:  # no voxel size set
        m.set_data(data)
    assert read_acquisition(tmp_path / "b.mrc").pixel_nm is None


@pytest.mark.parametrize("shape, layout", [
    ((9, 40, 48), "(9,H,W)"),
    ((9, 1, 40, 48), "(9,1,H,W)"),
    ((1, 9, 40, 48), "(1,9,H,W)"),
    ((2, 9, 40, 48), "(T,9,H,W)"),
    ((18, 40, 48), "(T·9,H,W)"),
])
def test_tiff_layouts(tmp_path, rng, shape, layout):
    data = _stack(rng, shape)
    tifffile.imwrite(tmp_path / "x.tif", data)
    acq = read_acquisition(tmp_path / "x.tif")
    t = int(np.prod(shape[:-2])) // 9
    assert acq.frames.shape == (t, 9, 40, 48) and acq.layout == layout
    np.testing.assert_array_equal(acq.frames.reshape(-1, 40, 48), data.reshape(-1, 40, 48))
    assert acq.pixel_nm is None


def test_imagej_and_ome_pixel_size(tmp_path, rng):
    data = _stack(rng, (2, 9, 40, 48)).astype(np.float32)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.0626, 1 / 0.0626),
                     metadata={"axes": "TZYX", "unit": "um"})
    acq = read_acquisition(tmp_path / "ij.tif")
    assert acq.frames.shape == (2, 9, 40, 48) and acq.pixel_nm == pytest.approx(62.6, rel=1e-5)
    tifffile.imwrite(tmp_path / "x.ome.tif", data, ome=True,
                     metadata={"axes": "TZYX", "PhysicalSizeX": 62.6, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 62.6, "PhysicalSizeYUnit": "nm"})
    acq = read_acquisition(tmp_path / "x.ome.tif")
    assert acq.source_format == "ome-tiff" and acq.pixel_nm == pytest.approx(62.6)
    np.testing.assert_array_equal(acq.frames, data)
    tifffile.imwrite(tmp_path / "cm.tif", data[0], resolution=(1e7 / 62.6, 1e7 / 62.6), resolutionunit=3)
    assert read_acquisition(tmp_path / "cm.tif").pixel_nm == pytest.approx(62.6, rel=1e-4)


def test_phase_major_is_reordered(tmp_path, rng):
    angle_major = _stack(rng)
    # frame = 3·phase + angle in the file
    phase_major = angle_major.reshape(3, 3, 40, 48).transpose(1, 0, 2, 3).reshape(9, 40, 48)
    tifffile.imwrite(tmp_path / "p.tif", phase_major)
    acq = read_acquisition(tmp_path / "p.tif", frame_order="phase_major")
    np.testing.assert_array_equal(acq.frames[0], angle_major)
    assert acq.frame_order == "phase_major"
    # 5 phases × 3 angles
    am = _stack(rng, (15, 40, 48))
    pm = am.reshape(3, 5, 40, 48).transpose(1, 0, 2, 3).reshape(15, 40, 48)
    tifffile.imwrite(tmp_path / "p15.tif", pm)
    np.testing.assert_array_equal(
        read_acquisition(tmp_path / "p15.tif", 3, 5, frame_order="phase_major").frames[0], am)


def test_bad_inputs(tmp_path, rng):
    def fails(path, match, **kw):
        with pytest.raises(InputError, match=match) as info:
            read_acquisition(path, **kw)
        assert str(path) in str(info.value)

    tifffile.imwrite(tmp_path / "ten.tif", _stack(rng, (10, 40, 48)))
    fails(tmp_path / "ten.tif", "10 frames is not a multiple of 9")
    tifffile.imwrite(tmp_path / "small.tif", _stack(rng, (9, 20, 48)))
    fails(tmp_path / "small.tif", "smaller than the minimum 32x32")
    tifffile.imwrite(tmp_path / "one.tif", _stack(rng, (40, 48)))
    fails(tmp_path / "one.tif", "single 40x48 image")
    nan = _stack(rng).astype(np.float32)
    nan[3, 5, 6] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    fails(tmp_path / "nan.tif", "NaN")
    tifffile.imwrite(tmp_path / "const.tif", np.full((9, 40, 48), 7, np.uint16))
    fails(tmp_path / "const.tif", "constant")
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((9, 40, 48), np.uint16))
    fails(tmp_path / "zero.tif", "empty")
    with pytest.warns(UserWarning, match="zero-size"):
        tifffile.imwrite(tmp_path / "none.tif", np.zeros((0, 40, 48), np.uint16))
    fails(tmp_path / "none.tif", "empty|cannot read")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    fails(tmp_path / "x.png", "unknown extension")
    fails(tmp_path / "missing.tif", "no such file")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    fails(tmp_path / "junk.tif", "cannot read as TIFF")


def test_truncated_and_foreign_mrc(tmp_path):
    raw = (EXAMPLE / "MT.mrc").read_bytes()
    (tmp_path / "cut.mrc").write_bytes(raw[: 1024 + 9 * 256 * 256])  # half the data block
    with pytest.raises(InputError, match="cut.mrc.*truncated"):
        read_acquisition(tmp_path / "cut.mrc")
    (tmp_path / "head.mrc").write_bytes(raw[:500])
    with pytest.raises(InputError, match="head.mrc.*shorter than the 1024-byte"):
        read_acquisition(tmp_path / "head.mrc")
    (tmp_path / "junk.dv").write_bytes(b"\x00" * 2048)  # neither MAP id nor DeltaVision magic
    with pytest.raises(InputError, match="junk.dv.*cannot read MRC"):
        read_acquisition(tmp_path / "junk.dv")


def test_saturation_warns_then_fails(tmp_path, rng):
    data = _stack(rng)
    data.reshape(-1)[: data.size // 100] = np.iinfo(np.uint16).max  # 1 %
    tifffile.imwrite(tmp_path / "sat.tif", data)
    with pytest.warns(SaturationWarning, match="saturated"):
        acq = read_acquisition(tmp_path / "sat.tif")
    assert any("saturated" in w for w in acq.warnings)
    data.reshape(-1)[: data.size // 10] = np.iinfo(np.uint16).max  # 10 %
    tifffile.imwrite(tmp_path / "sat2.tif", data)
    with pytest.raises(InputError, match=r"sat2.tif: 10.0% of pixels are saturated"):
        read_acquisition(tmp_path / "sat2.tif")
