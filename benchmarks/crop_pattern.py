"""The blind pattern estimate of the shipped real stack (MT.mrc, TIRF-SIM, pattern at 99 % of the
OTF cut-off) on its full field against every 64-px crop of it estimated alone (stride 32 px),
without and with the microscope's period hint (±5 %) and with the measured OTF.

    python benchmarks/crop_pattern.py [--out reports/bench/crop_pattern.json]

The goal is the same period (within 1 %) and orientation (within 1°) from any 64-px crop.
simuq estimates the pattern once per acquisition on the full field and shifts it to every crop or
tile (``simuq_core.realdata.crops``, ``simuq_core.inference.files``), so crops of an acquisition get the
full-field values by construction; this benchmark measures how far a crop *alone* is from them.

The ``joint_regular*`` settings are an exploration, not used by simuq: a "regular" microscope (one
period for all angles, orientations 180°/A apart) lets one search over (|k|, θ₀, rotation sense)
pool the three angles' matched-filter detection maps (:func:`simuq_core.pattern.estimate._detection_map`,
each normalised by its null RMS), so a weak angle is placed by the strong ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import ROOT, write_json
from scipy.ndimage import map_coordinates

from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.pattern import blind as P
from simuq_core.pattern.blind import estimate_pattern_blind
from simuq_core.realdata.reader import measured_otf, read_acquisition

EXAMPLE = ROOT / "examples" / "rdl_sim_microtubules"


class _Joint:
    """The exploratory regular-geometry estimate: ``period_px`` / ``orientation_deg`` per angle."""

    def __init__(self, frames: np.ndarray, n_angles: int, cutoff: float, period_hint: float | None = None,
                 tol: float = 0.05, band: tuple[float, float] = (0.3, 1.05), pad: int = 4):
        f, h, w = frames.shape
        otf = P.airy_camera_otf(cutoff)
        c0, cp = P._separate_bands(frames[None], n_angles)
        fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
        radius = np.hypot(fy, fx)
        c0_spec = np.fft.fft2(c0 - c0.mean(axis=(-2, -1), keepdims=True))
        noise = P._noise_power(np.fft.fft2(cp), radius, cutoff)
        lo, hi = ((1 / (period_hint * (1 + tol)), 1 / (period_hint * (1 - tol))) if period_hint
                  else (band[0] * cutoff, band[1] * cutoff))
        ph, pw = pad * h, pad * w
        prad = np.hypot(np.fft.fftfreq(ph)[:, None], np.fft.fftfreq(pw)[None, :])
        inside = (prad >= lo) & (prad <= hi)
        maps = []
        for a in range(n_angles):
            g = P._signal_fraction(c0_spec[0, a], radius, float(noise[0, a]))

            def template(qy, qx, g=g):
                big_h = otf(qy, qx)
                return g(np.hypot(qy, qx)) * big_h / (big_h**2 + P._WIENER_EPS)

            z = P._detection_map(cp[0, a], c0[0, a], otf, template, float(noise[0, a]), pad)
            maps.append(np.fft.fftshift(z / (np.median(z[inside]) / np.sqrt(np.log(2.0)))))

        def sample(a, qy, qx):
            return map_coordinates(maps[a], [qy * ph + ph // 2, qx * pw + pw // 2], order=1, mode="grid-wrap")

        kk, tt = np.meshgrid(np.arange(lo, hi, 0.25 / (pad * min(h, w))), np.radians(np.arange(0, 180, 0.1)),
                             indexing="ij")
        best = (-np.inf, 0.0, 0.0, 1)
        for sense in (1, -1):
            score = 0.0
            for a in range(n_angles):
                ang = tt + sense * a * np.pi / n_angles
                qy, qx = (kk * np.sin(ang)).ravel(), (kk * np.cos(ang)).ravel()
                score = score + np.maximum(sample(a, qy, qx), sample(a, -qy, -qx)).reshape(kk.shape) ** 2
            i = np.unravel_index(int(np.argmax(score)), score.shape)
            if score[i] > best[0]:
                best = (float(score[i]), float(kk[i]), float(tt[i]), sense)
        _, k0, t0, sense = best
        self.period_px = np.full(n_angles, 1.0 / k0)
        self.orientation_deg = np.degrees(t0 + sense * np.arange(n_angles) * np.pi / n_angles) % 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench" / "crop_pattern.json"))
    parser.add_argument("--crop", type=int, default=64)
    args = parser.parse_args()
    frames = read_acquisition(EXAMPLE / "MT.mrc").frames[0].astype(np.float64)
    cutoff = otf_cutoff_cycles_per_px(1.47, 525.0, 62.6)
    otf = measured_otf(EXAMPLE / "TIRF488_cam1_0_z30_OTF2d.mrc", 62.6)
    full = estimate_pattern_blind(frames, 3, cutoff)
    result = {"full_field": {"period_px": full.period_px.tolist(),
                             "orientation_deg": full.orientation_deg.tolist()},
              "crop": args.crop, "stride": args.crop // 2, "settings": {}}
    c, n = args.crop, frames.shape[-1]
    settings = (("blind", estimate_pattern_blind, {}),
                ("hint", estimate_pattern_blind, {"period_hint": 2.87}),
                ("hint_measured_otf", estimate_pattern_blind, {"period_hint": 2.87, "otf": otf}),
                ("joint_regular", _Joint, {}), ("joint_regular_hint", _Joint, {"period_hint": 2.87}))
    for name, estimator, kwargs in settings:
        dp, do = [], []
        for y in range(0, n - c + 1, c // 2):
            for x in range(0, n - c + 1, c // 2):
                est = estimator(frames[:, y:y + c, x:x + c], 3, cutoff, **kwargs)
                dp.append(float(np.max(np.abs(est.period_px / full.period_px - 1))))
                do.append(float(np.max(np.abs((est.orientation_deg - full.orientation_deg + 90) % 180 - 90))))
        dp_a, do_a = np.asarray(dp), np.asarray(do)
        result["settings"][name] = {
            "n_crops": len(dp), "period_within_1pct": float(np.mean(dp_a < 0.01)),
            "orientation_within_1deg": float(np.mean(do_a < 1.0)),
            "both": float(np.mean((dp_a < 0.01) & (do_a < 1.0))),
            "median_max_period_error": float(np.median(dp_a)),
            "median_max_orientation_error_deg": float(np.median(do_a))}
        print(name, result["settings"][name])
    write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
